"""Deterministic failures are not retried, and a job whose tiles keep failing the same way stops
with one message (issue 20, defect 6); transient failures keep their retries."""

from __future__ import annotations

import errno
import json
import logging
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import corpus, private_ray

from nncd_ray.cli.main import main
from nncd_ray.data.corpus import Corpus
from nncd_ray.errors import DocumentTooLong, InputError, StoreError, TileFailed
from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.matrix.failures import (
    STOP_AFTER,
    Failure,
    RetryPolicy,
    TileAttemptFailed,
    classify,
    is_deterministic,
)
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.tiling import TilePlan
from nncd_ray.scorers import ScorerSpec

# -- classification ---------------------------------------------------------------------------


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.OutOfMemoryError (a RuntimeError of that name)."""


def _raised_from(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as exc:
            raise outer from exc
    except Exception as caught:
        return caught


@pytest.mark.parametrize(
    "exc",
    [
        DocumentTooLong("document number 3 has 900 tokens, more than max_doc_tokens=254"),
        InputError("empty document"),
        PermissionError(errno.EACCES, "Access Denied"),
        OSError(errno.ENOSPC, "No space left on device"),
        MemoryError(),
        OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        # a store error raised from a permission error is as deterministic as its cause
        _raised_from(StoreError("cannot write tile 0,0"), PermissionError(13, "denied")),
    ],
)
def test_deterministic_errors(exc: Exception) -> None:
    assert is_deterministic(exc)
    assert classify(exc).deterministic


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("scorer hiccup"),
        ConnectionResetError(errno.ECONNRESET, "reset by peer"),
        TimeoutError("read timed out"),
        StoreError("cannot write tile 0,0"),
    ],
)
def test_transient_errors(exc: Exception) -> None:
    assert not is_deterministic(exc)


def test_classification_survives_pickling() -> None:
    # what Ray does with an actor's exception: the cause chain is lost, the classification is not
    wrapped = TileAttemptFailed.wrap(_raised_from(StoreError("write"), PermissionError(13, "no")))
    back = pickle.loads(pickle.dumps(wrapped))
    assert back.failure == Failure(
        kind="StoreError", message="StoreError: write", deterministic=True
    )
    assert classify(back) == back.failure and str(back) == "StoreError: write"


# -- the policy -------------------------------------------------------------------------------


class FakeBook:
    """The parts of TileLedger the policy calls."""

    def __init__(self) -> None:
        self.attempts_failed = 0
        self.failed: dict[str, str] = {}

    def attempt_failed(self, tile: object, message: str, attempt: int) -> None:
        self.attempts_failed += 1

    def tile_failed(self, tile: object, message: str) -> None:
        self.failed[tile.key] = message  # type: ignore[attr-defined]


TILES = list(TilePlan(n_rows=40, n_cols=40, tile=10))
TOO_LONG = Failure(kind="DocumentTooLong", message="DocumentTooLong: x", deterministic=True)
FLAKY = Failure(kind="RuntimeError", message="RuntimeError: y", deterministic=False)


def test_deterministic_failure_is_not_retried() -> None:
    policy, book = RetryPolicy(max_attempts=3), FakeBook()
    assert policy.on_failure(TILES[0], TOO_LONG, book) is False  # type: ignore[arg-type]
    assert book.attempts_failed == 1 and set(book.failed) == {TILES[0].key}
    assert policy.stopped is None


def test_transient_failure_is_retried_up_to_max_attempts() -> None:
    policy, book = RetryPolicy(max_attempts=3), FakeBook()
    assert [policy.on_failure(TILES[0], FLAKY, book) for _ in range(3)] == [True, True, False]  # type: ignore[arg-type]
    assert book.attempts_failed == 3 and set(book.failed) == {TILES[0].key}


def test_stop_after_tiles_failing_the_same_way_in_a_row() -> None:
    policy, book = RetryPolicy(max_attempts=3), FakeBook()
    policy.on_failure(TILES[0], TOO_LONG, book)  # type: ignore[arg-type]
    policy.on_failure(TILES[1], TOO_LONG, book)  # type: ignore[arg-type]
    policy.on_success(TILES[2])  # a success in between: the job goes on
    policy.on_failure(TILES[3], TOO_LONG, book)  # type: ignore[arg-type]
    assert policy.stopped is None
    for tile in TILES[5 : 5 + STOP_AFTER - 1]:
        policy.on_failure(tile, TOO_LONG, book)  # type: ignore[arg-type]
    assert policy.stopped == (TILES[3].key, TOO_LONG)  # the first of the failures in a row


def test_transient_failures_never_stop_the_job() -> None:
    # a poisoned document fails its tiles for an unknown reason: give them up, compute the rest
    policy, book = RetryPolicy(max_attempts=2), FakeBook()
    for tile in TILES[:6]:
        while policy.on_failure(tile, FLAKY, book):  # type: ignore[arg-type]
            pass
    assert policy.stopped is None and len(book.failed) == 6 and book.attempts_failed == 12


# -- whole jobs -------------------------------------------------------------------------------


def _write_jsonl(path: Path, docs: Corpus) -> None:
    with path.open("w") as out:
        for doc_id, text in zip(docs.ids, docs.texts, strict=True):
            out.write(json.dumps({"id": doc_id, "text": text}) + "\n")


def test_document_too_long_stops_at_once_with_one_line(
    tiny_gpt2_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # every document is longer than 4 tokens: every tile fails the same way
    docs = corpus(16, "d")
    _write_jsonl(tmp_path / "d.jsonl", docs)
    store = tmp_path / "t.zarr"
    code = main(
        [
            "matrix", "--input", str(tmp_path / "d.jsonl"), "--store", str(store),
            "--executor", "local", "--tile", "4", "--no-progress",
            "--compressor", "lm", "--model", str(tiny_gpt2_dir), "--device", "cpu",
            "--max-doc-tokens", "4", "--truncation", "error",
        ]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    last = err[-1]
    assert last.startswith("nncd matrix: error: stopped: the first 3 tiles failed the same way")
    assert "DocumentTooLong" in last and "not retried" in last
    assert "13 of 16 tiles not computed" in last
    assert "run the same command again" not in last
    assert "same command would fail the same way" in last
    assert len(err) == 1, err
    # one warning for the first failure of its kind, none per attempt
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "not retried" in warnings[0], warnings
    recorded = MatrixStore.open(str(store))
    assert len(recorded.failed_tiles) == 3 and recorded.tiles_done() == 0


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    with private_ray(2) as address:
        yield address


@pytest.mark.ray
def test_classified_failure_crosses_ray(ray_cluster: str) -> None:
    import ray
    from ray.exceptions import RayTaskError

    @ray.remote
    def fail() -> None:
        try:
            raise PermissionError(errno.EACCES, "Access Denied")
        except PermissionError as exc:
            raise TileAttemptFailed.wrap(exc) from exc

    with pytest.raises(RayTaskError) as caught:
        ray.get(fail.remote())
    failure = classify(caught.value.cause)
    assert failure.deterministic and failure.kind == "PermissionError"


def _unwritable_dir() -> Path:
    """A directory in which even root cannot create anything (sysfs refuses mkdir)."""
    target = Path("/sys/kernel")
    try:
        (target / "nncd-probe").mkdir()
    except PermissionError:
        return target
    except OSError as exc:
        pytest.skip(f"/sys/kernel cannot stand in for a read-only store here: {exc}")
    pytest.skip("/sys/kernel is writable here")


@pytest.mark.ray
def test_ray_job_on_a_store_it_may_not_write_stops_early(ray_cluster: str, tmp_path: Path) -> None:
    # a store whose chunks cannot be written: permission denied on every tile, as with an s3
    # bucket the job may read but not write. First a store skeleton without any chunk: a run in
    # which every tile fails (transient, given up after 1 attempt each)
    rows = corpus(16, "q")
    store = tmp_path / "p.zarr"
    poisoned = ScorerSpec(name="synthetic", options={"fail_on": "q"})
    with pytest.raises(TileFailed, match="16 of 16 tiles failed after 1 attempts each"):
        compute_matrix(
            MatrixConfig(
                store=str(store),
                scorer=poisoned,
                tile=4,
                executor="local",
                max_attempts=1,
                progress=False,
            ),
            rows,
        )
    assert not (store / "pair_bits" / "c").exists()
    (store / "pair_bits" / "c").symlink_to(_unwritable_dir(), target_is_directory=True)
    config = MatrixConfig(
        store=str(store), scorer=ScorerSpec(name="synthetic", options={}), tile=4, actors=1,
        progress=False,
    )  # fmt: skip
    with pytest.raises(TileFailed, match="stopped: the first 3 tiles failed the same way") as err:
        compute_matrix(config, rows)
    message = str(err.value)
    assert "PermissionError" in message or "Permission denied" in message, message
    assert "not retried" in message and "13 of 16 tiles not computed" in message
    assert "run the same command again" not in message
    summary = err.value.summary  # type: ignore[attr-defined]
    assert summary.tiles_failed == 3 and summary.attempts_failed == 3  # one attempt each


@pytest.mark.slow  # torch and transformers load in a fresh Ray worker: ~20 s on 2 cores
def test_document_too_long_through_ray_is_not_retried(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    import subprocess

    docs = corpus(12, "d")
    _write_jsonl(tmp_path / "d.jsonl", docs)
    done = subprocess.run(
        [
            sys.executable, "-m", "nncd_ray.cli.main", "matrix",
            "--input", str(tmp_path / "d.jsonl"), "--store", str(tmp_path / "r.zarr"),
            "--tile", "4", "--no-progress", "--compressor", "lm", "--model", str(tiny_gpt2_dir),
            "--device", "cpu", "--max-doc-tokens", "4", "--truncation", "error",
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "stopped: the first 3 tiles failed the same way" in lines[-1]
    assert "not retried" in lines[-1] and "DocumentTooLong" in lines[-1]
    assert sum("attempt" in line for line in lines) == 0  # no per-attempt retry warnings
