"""A matrix store on S3 (moto's server on localhost): Ray actors write it, a second run resumes it,
the result equals the same job on a local disk, and the lease works through fsspec too."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_helpers import assert_store_matches, corpus, private_ray

from nncd_ray.cli.status import store_status
from nncd_ray.data.corpus import Corpus
from nncd_ray.errors import StoreLocked, TileFailed
from nncd_ray.matrix.engine import MatrixConfig, compute_matrix
from nncd_ray.matrix.store.lease import Lease
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.scorers import ScorerSpec

pytestmark = pytest.mark.ray

BUCKET = "matrices"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict[str, Any]]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        yield {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    with private_ray(2) as address:
        yield address


def test_s3_job_resumes_and_equals_local(
    s3_options: dict[str, Any], ray_address: str, tmp_path: Path
) -> None:
    base = corpus(14, "q")
    texts = list(base.texts)
    texts[9] = "a POISON document fails its tiles in the first run"
    rows = Corpus.from_texts(texts, ids=base.ids, labels=base.labels)
    cols = corpus(9, "r")
    url = f"s3://{BUCKET}/jobs/m.zarr"

    def job(**options: Any) -> MatrixConfig:
        return MatrixConfig(
            store=url,
            scorer=ScorerSpec(name="synthetic", options=options),
            tile=5,
            variant="ncd-min",
            storage_options=s3_options,
            progress=False,
            max_attempts=1,
        )

    # first run, on Ray actors writing to S3: the tiles holding the poisoned row fail
    with pytest.raises(TileFailed):
        compute_matrix(job(fail_on="POISON"), rows, cols)
    status = store_status(url, s3_options)
    assert status["tiles_done"] == 4 and status["tiles_failed"] == 2
    assert status["lease"] is None  # released

    # resume (fail_on is not part of the fingerprint): only the two missing tiles
    summary = compute_matrix(job(), rows, cols)
    assert summary.tiles_skipped == 4 and summary.tiles_computed == 2
    remote = assert_store_matches(url, job().scorer, rows, cols, storage_options=s3_options)
    assert remote.failed_tiles == {}

    local_path = str(tmp_path / "local.zarr")
    local_config = MatrixConfig(
        store=local_path, scorer=job().scorer, tile=5, variant="ncd-min", progress=False,
        executor="local",
    )  # fmt: skip
    compute_matrix(local_config, rows, cols)
    local = MatrixStore.open(local_path)
    for name in ("pair_bits", "pair_bits_reversed", "row_bits", "col_bits", "row_bytes"):
        assert np.array_equal(remote.array(name)[:], local.array(name)[:], equal_nan=True), name


def test_s3_lease_refuses_a_second_driver(s3_options: dict[str, Any]) -> None:
    url = f"s3://{BUCKET}/jobs/locked.zarr"
    config = MatrixConfig(
        store=url,
        scorer=ScorerSpec(name="synthetic", options={}),
        executor="local",
        storage_options=s3_options,
        progress=False,
    )
    with Lease(url, storage_options=s3_options, settle_s=0.0) as held:
        assert held.read() is not None
        with pytest.raises(StoreLocked, match="another driver"):
            compute_matrix(config, corpus(3, "q"))
    assert Lease(url, storage_options=s3_options).read() is None
    assert compute_matrix(config, corpus(3, "q")).tiles_computed == 1
