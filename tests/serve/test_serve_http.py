"""``nncd serve`` end to end (issue 23): the real command, on its own private local Ray cluster
(CPU, the embedded model, two scorer replicas, token authentication on), asked over HTTP with a
real client (``requests``).

One service for the module, started as a subprocess while the same documents go through
``nncd matrix`` + ``nncd knn`` in this process: its answers must equal theirs (same neighbours,
NCD within 1e-6). Then bad requests (400 and a one-line reason), the CLI client and the
benchmark's load loop, a scorer replica killed under load (no request fails; it is replaced),
and a clean stop (exit 0, no process of its cluster left, the port free again).

The service's temp dir is under a parent of this module's own (``$NNCD_RAY_TMPDIR``), so only its
own processes are ever looked at or ended.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from paths import AGNEWS_CSV, ROOT

from nncd_ray.bench import serve as serve_bench
from nncd_ray.cli.main import main
from nncd_ray.data.protocols import load_protocol
from nncd_ray.matrix.cluster.private_cluster import TMPDIR_ENV
from nncd_ray.matrix.cluster.reaper import cluster_pids, end_cluster
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.reader import StoreReader
from nncd_ray.ncd import ncd_matrix

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(not AGNEWS_CSV.exists(), reason=f"no AG News at {AGNEWS_CSV}"),
]

REFS_PER_CLASS = 5
QUERIES = 8
K = 3
START_TIMEOUT_S = 240.0
TOKEN = "serve-test-token-0123456789abcdef"
# documents of at most this many UTF-8 bytes fit the embedded model's 254 tokens per document
MAX_BYTES = 400


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.5)


def write_jsonl(path: Path, ids: Any, texts: Any, labels: Any) -> None:
    with path.open("w", encoding="utf-8") as out:
        for doc_id, text, label in zip(ids, texts, labels, strict=True):
            out.write(json.dumps({"id": doc_id, "text": text, "label": label}) + "\n")


@dataclass
class Served:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    ray_parent: Path
    work: Path
    queries: list[str]
    store: str
    predictions: dict[str, dict[str, Any]]
    stderr: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=self.auth, timeout=300, **kwargs)

    def health(self) -> dict[str, Any]:
        """``GET /health``'s body; empty while no scorer replica answers (HTTP 503)."""
        answer = requests.get(self.url + "/health", timeout=30)
        body: dict[str, Any] = answer.json() if answer.status_code == 200 else {}
        return body


def _healthy(url: str, process: subprocess.Popen[bytes], stderr: Path) -> bool:
    if process.poll() is not None:
        pytest.fail(f"nncd serve exited with {process.returncode}: {stderr.read_text()[-2000:]}")
    try:
        answer = requests.get(url + "/health", timeout=10)
    except requests.RequestException:
        return False
    return answer.status_code == 200 and answer.json()["scorer_replicas"] == {"RUNNING": 2}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("served")
    split = load_protocol("agnews-small", AGNEWS_CSV)
    assert split.refs is not None and split.refs.labels is not None
    # documents that fit the model's context (the service runs with --truncation error)
    short = [j for j, text in enumerate(split.refs.texts) if len(text.encode()) <= MAX_BYTES]
    picked = [
        i
        for label in sorted(set(split.refs.labels))
        for i in [j for j in short if split.refs.labels[j] == label][:REFS_PER_CLASS]
    ]
    refs = split.refs.subset(sorted(picked))
    fitting = [j for j, text in enumerate(split.queries.texts) if len(text.encode()) <= MAX_BYTES]
    queries = split.queries.subset(fitting[:QUERIES])
    write_jsonl(work / "refs.jsonl", refs.ids, refs.texts, refs.labels)
    write_jsonl(work / "queries.jsonl", queries.ids, queries.texts, queries.labels)
    (work / "token").write_text(TOKEN + "\n")
    # Ray's socket paths must stay short: the cluster's temp dir goes under /tmp
    ray_parent = Path(tempfile.mkdtemp(prefix="nncd-sv-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[TMPDIR_ENV] = str(ray_parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    port = free_port()
    lm = ["--device", "cpu", "--truncation", "error"]
    command = [
        sys.executable,
        "-m",
        "nncd_ray.cli.main",
        "serve",
        "--refs",
        str(work / "refs.jsonl"),
    ]
    command += ["--token-file", str(work / "token"), "--replicas", "2", "--k", str(K)]
    command += ["--port", str(port), "--max-body-bytes", str(1 << 20), *lm]
    stderr = work / "serve.err"
    with (work / "serve.out").open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=work)
    try:
        # the same documents through the batch path, while the service starts
        store = str(work / "m.zarr")
        matrix = ["matrix", "--queries", str(work / "queries.jsonl"), "--refs"]
        matrix += [str(work / "refs.jsonl"), "--store", store, "--executor", "local", *lm]
        assert main(matrix) == 0
        knn = ["knn", "--store", store, "--k", f"1,{K}", "--predictions", str(work / "p.jsonl")]
        assert main(knn) == 0
        predictions = {}
        for line in (work / "p.jsonl").read_text().splitlines():
            record = json.loads(line)
            predictions[record["id"]] = record
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(url, process, stderr), START_TIMEOUT_S, "nncd serve")
        yield Served(
            url=url,
            port=port,
            process=process,
            ray_parent=ray_parent,
            work=work,
            queries=list(queries.texts),
            store=store,
            predictions=predictions,
            stderr=stderr,
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for directory in ray_parent.iterdir():
            end_cluster(str(directory))
        shutil.rmtree(ray_parent, ignore_errors=True)


def test_health_needs_no_token_and_everything_else_does(served: Served) -> None:
    health = served.health()
    assert health["status"] == "ok" and health["references"] == 4 * REFS_PER_CLASS
    assert health["k"] == K and health["device"] == "cpu"
    assert health["compressor"]["truncation"] == "error"
    body = {"text": served.queries[0]}
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": TOKEN},
    ):
        answer = requests.post(served.url + "/classify", json=body, headers=headers, timeout=30)
        assert answer.status_code == 401 and "token" in answer.json()["error"]
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(served.url + "/metrics", timeout=30).status_code == 401


def test_answers_equal_nncd_matrix_and_nncd_knn(served: Served) -> None:
    store = MatrixStore.open(served.store)
    reader = StoreReader(store)
    row_bits, col_bits = store.row_bits(), store.col_bits()
    expected = ncd_matrix(row_bits, col_bits, reader.rows("pair_bits", 0, QUERIES), "ncd")
    ref_ids = [str(i) for i in reader.document_values("col_ids")]
    query_ids = [str(i) for i in reader.document_values("row_ids")]

    distances = served.post("/distances", {"text": served.queries})
    assert distances.status_code == 200
    got = np.array([answer["ncd"] for answer in distances.json()], dtype=np.float64)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert served.post("/references", None).status_code == 405
    listed = requests.get(served.url + "/references", headers=served.auth, timeout=30).json()
    assert listed["ids"] == ref_ids  # the order of "ncd"

    order = np.lexsort((np.broadcast_to(np.arange(len(ref_ids)), expected.shape), expected))
    for k in (1, K):
        answers = served.post("/classify", {"text": served.queries, "k": k}).json()
        for row, answer in enumerate(answers):
            nearest = order[row, :k]
            assert [n["id"] for n in answer["neighbours"]] == [ref_ids[j] for j in nearest]
            np.testing.assert_allclose(
                [n["ncd"] for n in answer["neighbours"]], expected[row, nearest], atol=1e-6
            )
            assert answer["label"] == served.predictions[query_ids[row]]["predicted"][str(k)]
            scored = store.scored_bytes("row")
            assert scored is not None and answer["scored_bytes"] == scored[row]
            assert answer["bits_per_byte"] == pytest.approx(row_bits[row] / scored[row], rel=1e-6)
            assert answer["truncated"] is False
    # one text gets one object; the service's --k by default
    single = served.post("/classify", {"text": served.queries[2]}).json()
    assert isinstance(single, dict) and len(single["neighbours"]) == K


def test_concurrent_callers_get_the_answers_of_a_list(served: Served) -> None:
    as_list = served.post("/classify", {"text": served.queries}).json()
    answers: dict[int, Any] = {}

    def ask(i: int) -> None:
        answers[i] = served.post("/classify", {"text": served.queries[i]})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(QUERIES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(QUERIES):
        assert answers[i].status_code == 200
        one = answers[i].json()
        assert one["label"] == as_list[i]["label"]
        assert [n["id"] for n in one["neighbours"]] == [n["id"] for n in as_list[i]["neighbours"]]
        np.testing.assert_allclose(
            [n["ncd"] for n in one["neighbours"]],
            [n["ncd"] for n in as_list[i]["neighbours"]],
            atol=1e-6,
        )
    metrics = requests.get(served.url + "/metrics", headers=served.auth, timeout=30).json()
    assert metrics["responses"]["200"] >= QUERIES + 1 and metrics["queries"] >= 2 * QUERIES
    assert metrics["latency_ms"]["p50"] > 0 and metrics["pairs_per_s"] > 0
    assert metrics["mean_queries_per_batch"] > 1  # the lists' documents were scored together


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"text": ""}', "empty"),
        (b'{"text": ["fine text", "   "]}', "whitespace"),
        (b'{"text": "caf\xe9"}', "not valid UTF-8"),
        (b'{"text": "unclosed', "not JSON"),
        (b'{"texts": "a"}', "unknown field"),
        (b'{"text": "a", "k": 99}', "from 1 to 20"),
        (json.dumps({"text": "news " * 3000}).encode(), "more than max_doc_tokens"),
        (json.dumps({"text": ["fine", "news " * 3000]}).encode(), "document number 1"),
    ],
)
def test_bad_requests_are_answered_400_in_one_line(
    served: Served, body: bytes, reason: str
) -> None:
    headers = {**served.auth, "Content-Type": "application/json"}
    answer = requests.post(served.url + "/classify", data=body, headers=headers, timeout=60)
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]
    assert reason in message and "\n" not in message and "Traceback" not in message


def test_wrong_routes_and_oversized_bodies(served: Served) -> None:
    assert (
        requests.get(served.url + "/classify", headers=served.auth, timeout=30).status_code == 405
    )
    assert requests.get(served.url + "/nothing", headers=served.auth, timeout=30).status_code == 404
    big = served.post("/classify", {"text": "x" * (2 << 20)})
    assert big.status_code == 413 and "more than" in big.json()["error"]


def test_the_cli_client(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    token = str(served.work / "token")
    assert main(["classify", "--url", served.url, "--token-file", token, *served.queries[:2]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("nearest" in line and "bits/byte" in line for line in lines)
    argv = ["classify", "--url", served.url, "--token-file", token, "--distances", "--top", "2"]
    assert main([*argv, "--json", served.queries[0]]) == 0
    assert len(json.loads(capsys.readouterr().out)["neighbours"]) == 2
    assert main(["classify", "--url", served.url, "--no-auth", "x y"]) == 2
    assert "HTTP 401" in capsys.readouterr().err


def test_the_benchmarks_load_loop(served: Served) -> None:
    out = served.work / "bench.json"
    argv = ["--url", served.url, "--token-file", str(served.work / "token"), "--clients", "2"]
    argv += ["--duration", "3", "--warmup", "0", "--data", str(AGNEWS_CSV), "--json", str(out)]
    assert serve_bench.main(argv) == 0
    (run,) = json.loads(out.read_text())["modes"].values()
    assert run["answered"] >= 2 and run["failed"] == 0 and run["latency_ms"]["p99"] > 0
    assert run["pairs_per_s"] > 0 and run["service"]["max_batch"] >= 1


def test_a_killed_replica_costs_no_request(served: Served) -> None:
    pids: set[int] = set()
    wait_until(lambda: pids.add(served.health().get("pid", 0)) or len(pids - {0}) == 2, 60, "both")
    pids.discard(0)
    statuses: list[int] = []
    stop = threading.Event()

    def press(i: int) -> None:  # requests of 4 documents: both replicas are busy all along
        while not stop.is_set():
            texts = [served.queries[(i + j) % QUERIES] for j in range(4)]
            statuses.append(served.post("/classify", {"text": texts}).status_code)

    threads = [threading.Thread(target=press, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        new = wait_until(
            lambda: served.health().get("pid", min(pids)) not in pids, START_TIMEOUT_S, "a new one"
        )
        assert new
        time.sleep(2)  # requests on the new replica too
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses and set(statuses) == {200}, statuses
    metrics = requests.get(served.url + "/metrics", headers=served.auth, timeout=30).json()
    assert metrics["retries"] >= 1  # requests on the killed replica were sent again
    running = {"RUNNING": 2}
    assert wait_until(lambda: served.health().get("scorer_replicas") == running, 60, "2 replicas")


def test_stops_cleanly_and_leaves_nothing(served: Served) -> None:
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=60) == 0
    assert "nncd serve: stopped" in served.stderr.read_text()
    ready = (served.work / "serve.out").read_text()
    assert f"http://127.0.0.1:{served.port} ready: 20 references, 2 replica(s)" in ready
    for directory in served.ray_parent.iterdir():
        assert not cluster_pids(str(directory)), "a process of the cluster outlived nncd serve"
    with socket.socket() as probe:  # nothing listens on the HTTP port any more
        # (connections the service closed may linger in TIME_WAIT: servers reuse past those)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", served.port))
        probe.listen()
