"""``nncd serve``'s parts without a Ray cluster: request checks, tokens, metrics, answers (the
project's NCD and k-NN rule), the scorer engine, C(y) from a store, the client, and the CLI's
refusals before anything starts (issue 23)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_helpers import corpus

from nncd_ray.cli.classify import summary_line
from nncd_ray.cli.main import main
from nncd_ray.errors import ConfigError, InputError, ServiceError, StoreMismatch
from nncd_ray.knn.labels import LabelCodec
from nncd_ray.knn.neighbours import predict_codes
from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.ncd import ncd_matrix
from nncd_ray.scorers import ScorerSpec, make_scorer
from nncd_ray.serve import auth
from nncd_ray.serve.answers import QueryScores, ReferenceIndex
from nncd_ray.serve.client import ServiceClient
from nncd_ray.serve.config import AUTO_BATCH_MAX, AUTO_BATCH_MIN, ServeConfig
from nncd_ray.serve.engine import QueryEngine
from nncd_ray.serve.metrics import ServiceMetrics, latency_summary
from nncd_ray.serve.queries import parse_query
from nncd_ray.serve.references import check_store_references, stored_reference_bits

GZIP = ScorerSpec(name="gzip", options={})


# -- requests ------------------------------------------------------------------------------------


def parse(body: bytes | str, endpoint: str = "classify") -> Any:
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return parse_query(raw, endpoint=endpoint, max_texts=4, n_refs=10)


def test_a_text_or_a_list_of_texts() -> None:
    one = parse('{"text": "oil prices rise"}')
    assert one.texts == ("oil prices rise",) and one.single and one.k is None
    many = parse('{"text": ["a b", "c d"], "top": 3}', endpoint="distances")
    assert many.texts == ("a b", "c d") and not many.single and many.top == 3
    assert parse('{"text": "x y", "k": 10}').k == 10


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"\xff\xfe{", "not valid UTF-8"),
        (b'{"text": "caf\xe9"}', "not valid UTF-8"),
        ("{text: 1}", "not JSON"),
        ('["a"]', "must be a JSON object"),
        ("{}", 'no "text"'),
        ('{"text": ""}', "is empty"),
        ('{"text": "  \\n "}', "only whitespace"),
        ('{"text": []}', "empty list"),
        ('{"text": ["a", "b", "c", "d", "e"]}', "more than this service takes"),
        ('{"text": 3}', "not int"),
        ('{"text": ["a", null]}', "document number 1 is null"),
        ('{"text": "\\ud800 lone"}', "not valid UTF-8"),
        ('{"text": "a", "k": 0}', '"k" must be an integer from 1 to 10'),
        ('{"text": "a", "k": 11}', "from 1 to 10"),
        ('{"text": "a", "k": true}', "from 1 to 10"),
        ('{"text": "a", "top": 2}', "unknown field 'top'"),
    ],
)
def test_bad_requests_are_refused_in_one_line(body: bytes | str, reason: str) -> None:
    with pytest.raises(InputError, match=reason) as caught:
        parse(body)
    assert "\n" not in str(caught.value)


# -- tokens ----------------------------------------------------------------------------------------


def test_token_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    monkeypatch.delenv(auth.TOKEN_PATH_ENV, raising=False)
    assert auth.find_token() == (None, "none")
    path = tmp_path / "t"
    path.write_text("from-the-path-variable\n")
    monkeypatch.setenv(auth.TOKEN_PATH_ENV, str(path))
    assert auth.find_token()[0] == "from-the-path-variable"
    monkeypatch.setenv(auth.TOKEN_ENV, "from-the-token-variable")
    assert auth.find_token()[0] == "from-the-token-variable"
    given = tmp_path / "given"
    given.write_text("from-the-token-file-flag")
    assert auth.find_token(str(given))[0] == "from-the-token-file-flag"


def test_server_tokens_are_required_and_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    monkeypatch.delenv(auth.TOKEN_PATH_ENV, raising=False)
    with pytest.raises(ConfigError, match="needs a bearer token"):
        auth.server_token_digest(None, no_auth=False)
    assert auth.server_token_digest(None, no_auth=True) is None
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ConfigError, match="at least 16"):
        auth.server_token_digest(str(short), no_auth=False)
    good = tmp_path / "good"
    good.write_text("0123456789abcdef0123")
    digest = auth.server_token_digest(str(good), no_auth=False)
    assert digest == auth.token_digest("0123456789abcdef0123")
    assert auth.authorized("Bearer 0123456789abcdef0123", digest)
    assert auth.authorized("bearer  0123456789abcdef0123 ", digest)
    for header in (None, "", "Bearer", "Bearer wrong", "Basic 0123456789abcdef0123"):
        assert not auth.authorized(header, digest)
    assert auth.authorized(None, None)  # authentication off


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_percentiles_and_rates() -> None:
    now = [100.0]
    metrics = ServiceMetrics(n_refs=10, rate_window_s=10.0, clock=lambda: now[0])
    for i in range(100):
        metrics.record("classify", 200, (i + 1) / 1000, queries=1, batch_sizes=[4])
    metrics.record("classify", 400, 0.001)
    metrics.record("distances", 200, 0.5, queries=2, batch_sizes=[1, 1])
    metrics.retried()
    now[0] = 105.0
    snapshot = metrics.snapshot()
    assert snapshot["requests"] == {"classify": 101, "distances": 1}
    assert snapshot["responses"] == {"200": 101, "400": 1}
    assert snapshot["queries"] == 102 and snapshot["pairs"] == 1020 and snapshot["retries"] == 1
    assert snapshot["latency_ms"]["n"] == 101
    expected = np.percentile([*(np.arange(1, 101)), 500.0], [50, 95, 99])
    got = [snapshot["latency_ms"][f"p{p}"] for p in (50, 95, 99)]
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert snapshot["queries_per_s"] == pytest.approx(102 / 5)
    assert snapshot["pairs_per_s"] == pytest.approx(1020 / 5)
    # 100 queries saw batches of 4, 2 saw batches of 1: 25 + 2 batches of 102 queries
    assert snapshot["mean_queries_per_batch"] == pytest.approx(102 / 27, abs=1e-3)
    now[0] = 200.0  # out of the rate window
    assert metrics.snapshot()["queries_per_s"] == 0
    assert latency_summary([])["p50"] is None


# -- answers ---------------------------------------------------------------------------------------


def test_answers_follow_the_projects_ncd_and_knn_rule() -> None:
    rng = np.random.default_rng(0)
    n_queries, n_refs = 7, 12
    ref_bits = rng.uniform(400, 900, n_refs).astype(np.float32)
    query_bits = rng.uniform(400, 900, n_queries).astype(np.float32)
    pair = (np.maximum.outer(query_bits, ref_bits) + rng.uniform(100, 300, (7, 12))).astype(
        np.float32
    )
    pair[2, 5] = pair[2, 6]  # ties broken by reference index
    labels = ["b", "a", "c"] * 4
    index = ReferenceIndex(
        ids=[f"r{j}" for j in range(n_refs)], labels=labels, bits=ref_bits, variant="ncd"
    )
    scores = QueryScores(
        query_bits=query_bits,
        pair_bits=pair,
        reversed_bits=None,
        scored_bytes=np.full(n_queries, 100, dtype=np.int64),
        truncated=np.zeros(n_queries, dtype=bool),
    )
    ncd = ncd_matrix(query_bits, ref_bits, pair, "ncd")
    codec = LabelCodec.from_labels(labels)
    expected = codec.decode(predict_codes(ncd, codec.encode(labels), [3], len(codec))[3])
    answers = index.classify(scores, 3)
    assert [a["label"] for a in answers] == expected
    order = np.lexsort((np.broadcast_to(np.arange(n_refs), ncd.shape), ncd), axis=1)[:, :3]
    for row, answer in enumerate(answers):
        assert [n["id"] for n in answer["neighbours"]] == [f"r{j}" for j in order[row]]
        assert [n["ncd"] for n in answer["neighbours"]] == ncd[row, order[row]].tolist()
        assert answer["bits_per_byte"] == pytest.approx(float(query_bits[row]) / 100)
    full = index.distances(scores, None)
    np.testing.assert_array_equal([a["ncd"] for a in full], ncd)
    top = index.distances(scores, 2)
    assert [n["id"] for n in top[0]["neighbours"]] == [f"r{j}" for j in order[0, :2]]


# -- the engine: the project's scorer, whole tiles -------------------------------------------------


@pytest.mark.parametrize("variant", ["ncd", "ncd-min"])
def test_engine_equals_the_scorer(variant: str) -> None:
    refs, queries = corpus(6, "r"), corpus(4, "q")
    engine = QueryEngine(GZIP, refs.texts, variant=variant)
    scorer = make_scorer(GZIP)
    scores = engine.score(queries.texts)
    np.testing.assert_array_equal(
        scores.pair_bits, scorer.pair_bits(queries.texts, refs.texts).astype(np.float32)
    )
    np.testing.assert_array_equal(
        scores.query_bits, scorer.document_bits(queries.texts).astype(np.float32)
    )
    np.testing.assert_array_equal(
        engine.reference_bits(), scorer.document_bits(refs.texts).astype(np.float32)
    )
    if variant == "ncd-min":
        assert scores.reversed_bits is not None
        np.testing.assert_array_equal(
            scores.reversed_bits, scorer.pair_bits(refs.texts, queries.texts).T
        )
    else:
        assert scores.reversed_bits is None


def test_engine_runs_the_lm_tile_path(tiny_gpt2_dir: Path) -> None:
    spec = ScorerSpec(name="lm", options={"model": str(tiny_gpt2_dir), "device": "cpu"})
    refs, queries = corpus(5, "r"), corpus(3, "q")
    engine = QueryEngine(spec, refs.texts, variant="ncd-min")
    scorer = make_scorer(spec)
    tile = scorer.score_tile(queries.texts, refs.texts)
    scores = engine.score(queries.texts)
    # other batch shapes than one whole tile: float32 rounding only
    np.testing.assert_allclose(scores.pair_bits, tile.pair_bits, rtol=1e-5)
    np.testing.assert_allclose(scores.query_bits, tile.row_bits, rtol=1e-5)
    np.testing.assert_allclose(engine.reference_bits(), tile.col_bits, rtol=1e-5)
    assert scores.reversed_bits is not None
    np.testing.assert_allclose(
        scores.reversed_bits, scorer.pair_bits(refs.texts, queries.texts).T, rtol=1e-5
    )
    assert engine.device() == "cpu" and engine.token_budget and engine.reference_tokens()


# -- C(y) from a store -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gzip_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("serve") / "g.zarr")
    config = MatrixConfig(store=path, scorer=GZIP, executor="local", tile=4, progress=False)
    compute_matrix(config, corpus(5, "q"), corpus(6, "r"))
    return path


def test_reference_bits_from_a_store(gzip_store: str) -> None:
    refs = corpus(6, "r")
    fingerprint = make_scorer(GZIP).fingerprint()
    bits = stored_reference_bits(gzip_store, refs, fingerprint)
    np.testing.assert_array_equal(bits, MatrixStore.open(gzip_store).col_bits())
    np.testing.assert_array_equal(
        bits, QueryEngine(GZIP, refs.texts, variant="ncd").reference_bits()
    )


def test_a_store_of_other_references_or_settings_is_refused(gzip_store: str) -> None:
    with pytest.raises(StoreMismatch, match="references 6 documents"):
        check_store_references(gzip_store, corpus(7, "r"))
    with pytest.raises(StoreMismatch, match="compressor gzip, not bz2"):
        check_store_references(gzip_store, corpus(6, "r"), compressor="bz2")
    level6 = make_scorer(ScorerSpec(name="gzip", options={"level": 6})).fingerprint()
    with pytest.raises(StoreMismatch, match="level"):
        stored_reference_bits(gzip_store, corpus(6, "r"), level6)


# -- the client ------------------------------------------------------------------------------------


class _Stub(BaseHTTPRequestHandler):
    """Answers like a service: 400 with a one-line reason for "bad", else an echo."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["text"] == "bad":
            self._send(400, {"error": "the request has no good text"})
        else:
            self._send(200, {"got": body, "auth": self.headers.get("Authorization")})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_client_sends_the_token_and_maps_errors(stub_url: str) -> None:
    client = ServiceClient(stub_url, token="secret-token-0123456789")
    answer = client.classify(["a", "b"], k=3)
    assert answer["got"] == {"text": ["a", "b"], "k": 3}
    assert answer["auth"] == "Bearer secret-token-0123456789"
    assert client.distances("c", top=2)["got"] == {"text": "c", "top": 2}
    with pytest.raises(ServiceError, match="HTTP 400: the request has no good text") as caught:
        client.classify("bad")
    assert caught.value.status == 400
    with pytest.raises(ServiceError, match="cannot reach") as unreachable:
        ServiceClient("http://127.0.0.1:9", token="").health()
    assert unreachable.value.status is None
    with pytest.raises(ServiceError, match="http://"):
        ServiceClient("127.0.0.1:8000")


def test_classify_summary_line() -> None:
    answer = {
        "label": "World",
        "neighbours": [{"id": "r3", "label": "World", "ncd": 0.91234567}],
        "bits_per_byte": 3.14159,
        "truncated": True,
        "scored_bytes": 512,
    }
    assert summary_line(answer) == (
        "World\tnearest r3 (World) ncd 0.912346\tbits/byte 3.142\ttruncated to 512 bytes"
    )


# -- configuration and the CLI's refusals (no cluster is started) ---------------------------------


def test_batch_size() -> None:
    config = ServeConfig(scorer=GZIP)
    assert config.batch_size(None, None) == AUTO_BATCH_MIN
    assert config.batch_size(65536, 5000) == 14  # enough queries to fill the token budget
    assert config.batch_size(10**9, 10) == AUTO_BATCH_MAX
    assert ServeConfig(scorer=GZIP, max_batch=1).batch_size(65536, 5000) == 1
    with pytest.raises(ConfigError, match="--max-batch"):
        ServeConfig(scorer=GZIP, max_batch=0).validate()
    with pytest.raises(ConfigError, match="variant"):
        ServeConfig(scorer=GZIP, variant="cosine").validate()


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if ``nncd serve`` got as far as starting a cluster."""
    from nncd_ray.serve import app

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a Ray cluster was started")

    monkeypatch.setattr(app, "ray_cluster", refuse)
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    monkeypatch.delenv(auth.TOKEN_PATH_ENV, raising=False)


def _refs_file(tmp_path: Path, n: int = 6) -> str:
    path = tmp_path / f"refs{n}.jsonl"
    refs = corpus(n, "r")
    assert refs.labels is not None
    rows = zip(refs.ids, refs.texts, refs.labels, strict=True)
    path.write_text(
        "".join(json.dumps({"id": i, "text": t, "label": lb}) + "\n" for i, t, lb in rows)
    )
    return str(path)


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nncd {argv[0]}: error: ") and "\n" not in err, err
    return err


@pytest.mark.usefixtures("no_cluster")
def test_serve_refuses_bad_input_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], gzip_store: str
) -> None:
    refs = _refs_file(tmp_path)
    missing = str(tmp_path / "nope.csv")
    assert "no such file" in _one_line_error(capsys, ["serve", "--refs", missing, "--no-auth"])
    err = _one_line_error(capsys, ["serve", "--refs", refs, "--no-auth", "--model", "./no/model"])
    assert "does not exist" in err
    err = _one_line_error(capsys, ["serve", "--refs", refs, "--no-auth", "--store", gzip_store])
    assert "compressor gzip, not lm" in err and "references" not in err.split(":")[2]
    others = _refs_file(tmp_path, n=7)
    argv = ["serve", "--refs", others, "--no-auth", "--store", gzip_store, "--compressor", "gzip"]
    assert "computed with references 6 documents" in _one_line_error(capsys, argv)
    err = _one_line_error(capsys, ["serve", "--refs", refs])
    assert "needs a bearer token" in err
    short = tmp_path / "token"
    short.write_text("short")
    err = _one_line_error(capsys, ["serve", "--refs", refs, "--token-file", str(short)])
    assert "at least 16" in err
    err = _one_line_error(capsys, ["serve", "--no-auth"])
    assert "no references" in err
    err = _one_line_error(
        capsys,
        [
            "serve",
            "--refs",
            refs,
            "--no-auth",
            "--compressor",
            "gzip",
            "--gpus-per-replica",
            "0",
            "--device",
            "cuda",
        ],
    )
    assert "--device" in err


def test_classify_refuses_an_unreachable_service(capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_line_error(capsys, ["classify", "--url", "http://127.0.0.1:9", "--no-auth", "x"])
    assert "cannot reach the service" in err


def test_rayservice_builder_takes_nncd_serve_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nncd_ray.cli import serve as serve_cli
    from nncd_ray.serve import app

    monkeypatch.setattr(app, "gpus_for", lambda config: 0.0)
    refs = _refs_file(tmp_path)
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    # called the way Ray Serve calls a RayService's import_path
    application = call_user_app_builder_with_args_if_necessary(
        serve_cli.app_builder,  # type: ignore[arg-type]
        {"command": f"--refs {refs} --compressor gzip --no-auth --replicas 2 --k 3"},
    )
    assert type(application).__name__ == "Application"
    with pytest.raises(ConfigError, match="--port is the RayService's"):
        serve_cli.app_builder({"command": f"--refs {refs} --no-auth --port 9000"})


# -- request batching ----------------------------------------------------------------------------


def test_batches_fill_under_load_and_a_lone_query_waits_little() -> None:
    import asyncio
    import time

    from nncd_ray.serve.batcher import QueryBatcher

    sizes: list[int] = []

    def run(texts: list[str]) -> list[str]:
        sizes.append(len(texts))
        time.sleep(0.05)  # the scorer is busy: queries queue up meanwhile
        if "boom" in texts:
            raise InputError("the scorer refused the batch")
        return [text.upper() for text in texts]

    async def main() -> None:
        batcher = QueryBatcher(run, max_batch=8, wait_s=0.01)
        alone = time.perf_counter()
        assert await batcher.submit("a") == ("A", 1)
        assert time.perf_counter() - alone < 0.05 + 0.5
        # 40 callers at once: every batch is full
        answers = await asyncio.gather(*(batcher.submit(f"q{i}") for i in range(40)))
        assert [text for text, _ in answers] == [f"Q{i}" for i in range(40)]
        assert sizes == [1, 8, 8, 8, 8, 8]
        # callers arriving one by one (every 2 ms) while a batch runs: the next batch, formed
        # when the scorer is free, takes all that waited (not one per wait window)
        sizes.clear()

        async def later(i: int) -> tuple[str, int]:
            await asyncio.sleep(0.002 * i)
            return await trickle.submit(f"t{i}")

        trickle = QueryBatcher(run, max_batch=8, wait_s=0.001)
        await asyncio.gather(*(later(i) for i in range(20)))
        assert sizes[0] == 1 and sizes[1:3] == [8, 8], sizes
        with pytest.raises(InputError, match="refused"):
            await batcher.submit("boom")
        assert await batcher.submit("b") == ("B", 1)  # the worker lives on

    asyncio.run(main())
