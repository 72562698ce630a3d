"""Remote-store failures end in one line and exit 2 (issue 20, defect 5): no credentials, a missing
bucket, an unreachable endpoint, access denied. S3 is moto's server on localhost. On c8ebf8c each
of these printed a 51-119 line traceback and exited 1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import corpus

from nncd_ray.cli.main import main
from nncd_ray.errors import StoreAccessDenied, StoreCredentialsMissing, StoreUnreachable
from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.scorers import ScorerSpec

# moto's servers in one process share one in-memory S3: a bucket of this module's own
BUCKET = "remote-errors"
STORE = f"s3://{BUCKET}/jobs/m.zarr"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 on localhost, with a bucket holding one finished store."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
        compute_matrix(
            MatrixConfig(
                store=STORE,
                scorer=ScorerSpec(name="gzip"),
                tile=4,
                executor="local",
                progress=False,
                storage_options={"endpoint_url": url, "key": "testing", "secret": "testing"},
            ),
            corpus(6, "s"),
        )
        yield url
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the credentials a test passes exist; one attempt per request (no retry back-off)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


def options(endpoint: str, *, keys: bool = True) -> list[str]:
    flags = ["--storage-option", f"endpoint_url={endpoint}"]
    if keys:
        flags += ["--storage-option", "key=testing", "--storage-option", "secret=testing"]
    return flags


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr. Returns that line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    path.write_text("".join(f'{{"text": "document number {i}"}}\n' for i in range(3)))
    return str(path)


def matrix_argv(store: str, endpoint: str, documents: str, *, keys: bool = True) -> list[str]:
    return [
        "matrix", "--input", documents, "--compressor", "gzip", "--executor", "local",
        "--store", store, *options(endpoint, keys=keys),
    ]  # fmt: skip


def test_the_store_reads_with_good_credentials(
    endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--store", STORE, *options(endpoint)]) == 0
    assert "tiles: 4 done" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["status", "knn"])
def test_no_credentials(endpoint: str, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error([command, "--store", STORE, *options(endpoint, keys=False)], capsys)
    assert "no credentials for s3://remote-errors/jobs/m.zarr" in err and "AWS_ACCESS_KEY_ID" in err


def test_no_credentials_for_a_matrix_job(
    endpoint: str, documents: str, capsys: pytest.CaptureFixture[str]
) -> None:
    new_store = f"s3://{BUCKET}/jobs/new.zarr"
    err = one_line_error(matrix_argv(new_store, endpoint, documents, keys=False), capsys)
    assert "no credentials" in err


def test_missing_bucket(endpoint: str, documents: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(["status", "--store", "s3://nobucket/m.zarr", *options(endpoint)], capsys)
    assert "bucket 'nobucket' does not exist" in err
    err = one_line_error(["knn", "--store", "s3://nobucket/m.zarr", *options(endpoint)], capsys)
    assert "no matrix store at s3://nobucket/m.zarr" in err
    err = one_line_error(matrix_argv("s3://nobucket/m.zarr", endpoint, documents), capsys)
    assert "the bucket of s3://nobucket/m.zarr does not exist" in err


def test_unreachable_endpoint(documents: str, capsys: pytest.CaptureFixture[str]) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for command in ("status", "knn"):
        err = one_line_error([command, "--store", STORE, *options(nowhere)], capsys)
        assert "cannot reach the storage of s3://remote-errors/jobs/m.zarr" in err
    err = one_line_error(matrix_argv(STORE, nowhere, documents), capsys)
    assert "cannot reach" in err and "endpoint_url" in err


def test_access_denied(
    endpoint: str,
    documents: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from moto import settings

    # moto checks signatures from now on: the key "testing" belongs to no IAM user, so every
    # request is refused with 403, as a real S3 refuses a key without the permission
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    for command in ("status", "knn"):
        err = one_line_error([command, "--store", STORE, *options(endpoint)], capsys)
        assert "access to s3://remote-errors/jobs/m.zarr was denied" in err
    err = one_line_error(matrix_argv(STORE, endpoint, documents), capsys)
    assert "denied" in err


def test_library_callers_get_the_typed_errors(endpoint: str) -> None:
    with pytest.raises(StoreCredentialsMissing):
        MatrixStore.open(STORE, storage_options={"endpoint_url": endpoint})
    with pytest.raises(StoreUnreachable):
        MatrixStore.open(
            STORE,
            storage_options={
                "endpoint_url": f"http://127.0.0.1:{free_port()}",
                "key": "testing",
                "secret": "testing",
            },
        )
    assert issubclass(StoreCredentialsMissing, StoreAccessDenied)
    assert issubclass(StoreAccessDenied, PermissionError)


def test_local_permission_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A local store that cannot be written (tests run as root, so the refusal is simulated)."""
    import fsspec.implementations.local as local_fs

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "m.zarr"))

    monkeypatch.setattr(local_fs.LocalFileSystem, "exists", refuse)
    err = one_line_error(["status", "--store", str(tmp_path / "m.zarr")], capsys)
    assert "was denied" in err and "permissions of the folder" in err
