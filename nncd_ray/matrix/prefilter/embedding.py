"""Sentence embeddings as the prefilter (``--prefilter embed``): ``1 − cosine`` between the
all-MiniLM-L6-v2 embeddings of a query and a reference (:mod:`.sentence_model`, the optional
``[embed]`` extra).

Its data, in the sparse store's ``prefilter`` group: ``row_embeddings`` (queries, 384) and
``col_embeddings`` (references, 384), float32 unit vectors, in chunks of :data:`CHUNK` documents,
each chunk with its own completion marker (``row_chunks_done`` / ``col_chunks_done``, set only after
the chunk is written), so a killed job embeds only the chunks that are missing. On resume every
done chunk is read back and checked (decodes, finite, unit length); a bad one is embedded again.
The embeddings are computed in the driver's process, on its CPU (``device`` in
:class:`~.sentence_model.EmbeddingSettings`): 22.7 M parameters, one pass per document, far less
than one LM pair per reference.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from numpy.typing import NDArray

from nncd_ray.errors import IncompleteMatrix
from nncd_ray.matrix.prefilter.base import PrefilterJob, PrefilterSummary
from nncd_ray.matrix.prefilter.sentence_model import (
    EmbeddingSettings,
    SentenceEmbedder,
    cosine_distances,
    embedding_model_dir,
)
from nncd_ray.matrix.store.chunks import UndecodableChunk, read_cells
from nncd_ray.matrix.store.layout import new_array
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.storage_errors import maps_store_errors

if TYPE_CHECKING:
    from nncd_ray.data.corpus import Corpus

# documents per chunk (and per completion marker)
CHUNK = 1024
# dimensions of all-MiniLM-L6-v2's embeddings
DIMENSIONS = 384
FORMAT = "nncd-embeddings/1"
SIDES = ("row", "col")


def _chunk_problem(values: NDArray[Any]) -> str | None:
    """``None`` when every row of ``values`` is a finite unit vector, else what is wrong."""
    if not np.isfinite(values).all():
        return "holds values that are not finite"
    norms = np.linalg.norm(np.asarray(values, dtype=np.float64), axis=1)
    if (np.abs(norms - 1.0) > 1e-3).any():
        return "holds vectors that are not of unit length"
    return None


class EmbeddingPrefilter:
    """Cosine distance of sentence embeddings (see the module docstring)."""

    name = "embed"

    def __init__(self, *, settings: EmbeddingSettings | None = None) -> None:
        self.settings = settings or EmbeddingSettings()

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "distance": "1 - cosine", **self.settings.fingerprint()}

    def check_available(self) -> None:
        """Refuse (with the install hint) where the ``[embed]`` extra is missing."""
        embedding_model_dir()

    def compute(self, job: PrefilterJob) -> PrefilterSummary:
        """Embed the documents of every chunk not done yet (checking the done ones first)."""
        started = time.perf_counter()
        embedding_model_dir()  # a missing extra is refused before anything is written
        group = _open_group(job.url, job.config.storage_options, job.rows, job.cols, self)
        embedder: SentenceEmbedder | None = None
        computed = 0
        for side, corpus in (("row", job.rows), ("col", job.cols)):
            for chunk in _chunks_to_do(group, side):
                job.lease.check()
                if embedder is None:
                    embedder = SentenceEmbedder(self.settings)
                start, stop = chunk * CHUNK, min((chunk + 1) * CHUNK, len(corpus))
                _write_chunk(group, side, chunk, embedder.embed(corpus.texts[start:stop]))
                computed += stop - start
        return PrefilterSummary(
            name=self.name,
            computed=computed,
            unit="documents embedded",
            seconds=time.perf_counter() - started,
        )

    def open(
        self, url: str, storage_options: Mapping[str, Any] | None = None
    ) -> EmbeddingPrefilterReader:
        return EmbeddingPrefilterReader(_group(url, storage_options, read_only=True))


class EmbeddingPrefilterReader:
    """Distances from the stored embeddings (every chunk checked as it is read)."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        self.n_rows = int(_array(group, "row_embeddings").shape[0])
        self.n_cols = int(_array(group, "col_embeddings").shape[0])
        self._references: NDArray[np.float32] | None = None

    def complete(self) -> bool:
        return all(_done(self.group, side).all() for side in SIDES)

    def embeddings(self, side: str, start: int, stop: int) -> NDArray[np.float32]:
        """``(stop - start, 384) float32`` unit vectors of one side's documents."""
        if not self.complete():
            raise IncompleteMatrix(
                f"the embeddings in {self.group.store} are not complete; run the same `nncd "
                "matrix` command again to finish them"
            )
        values = _read(self.group, side, start, stop)
        problem = _chunk_problem(values)
        if problem is not None:
            raise IncompleteMatrix(
                f"the {side} embeddings {start}-{stop - 1} {problem}; run the same `nncd matrix` "
                "command again to embed them again"
            )
        return values

    def distances(self, start: int, stop: int) -> NDArray[np.float64]:
        """``(stop - start, n_cols) float64`` ``1 − cosine`` of queries ``[start, stop)``."""
        if self._references is None:
            self._references = self.embeddings("col", 0, self.n_cols)
        return cosine_distances(self.embeddings("row", start, stop), self._references)

    def verify(self) -> list[str]:
        problems = []
        for side in SIDES:
            for chunk in np.flatnonzero(_done(self.group, side)):
                problem = _check_chunk(self.group, side, int(chunk))
                if problem is not None:
                    problems.append(f"{side} embeddings, chunk {int(chunk)}: {problem}")
        return problems


@maps_store_errors
def _group(url: str, storage_options: Mapping[str, Any] | None, *, read_only: bool) -> zarr.Group:
    store = MatrixStore.zarr_store(url, dict(storage_options or {}), read_only=read_only)
    return zarr.open_group(store=store, mode="r" if read_only else "a", use_consolidated=False)


def _array(group: zarr.Group, name: str) -> zarr.Array:
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise IncompleteMatrix(f"{group.store}/{name} is not an array")
    return node


@maps_store_errors
def _open_group(
    url: str,
    storage_options: Mapping[str, Any] | None,
    rows: Corpus,
    cols: Corpus,
    prefilter: EmbeddingPrefilter,
) -> zarr.Group:
    """The embeddings' group, created on the first run (the sparse store's fingerprint, checked
    before, already holds the prefilter's)."""
    group = _group(url, storage_options, read_only=False)
    if group.attrs.get("format") == FORMAT:
        return group
    for side, corpus in (("row", rows), ("col", cols)):
        n = len(corpus)
        new_array(
            group,
            f"{side}_embeddings",
            shape=(n, DIMENSIONS),
            chunks=(CHUNK, DIMENSIONS),
            dtype="float32",
            dims=(side, "dimension"),
            fill_value=np.nan,
        )
        new_array(
            group,
            f"{side}_chunks_done",
            shape=(-(-n // CHUNK),),
            chunks=(1,),
            dtype="bool",
            dims=(f"{side}_chunk",),
            fill_value=False,
        )
    group.attrs.update(
        {"fingerprint": json.loads(json.dumps(prefilter.fingerprint())), "chunk": CHUNK}
    )
    group.attrs["format"] = FORMAT  # last: a group whose creation was interrupted has none
    return group


def _done(group: zarr.Group, side: str) -> NDArray[np.bool_]:
    try:
        return np.asarray(read_cells(_array(group, f"{side}_chunks_done"), (slice(None),)), bool)
    except UndecodableChunk:  # a marker that does not decode: read them one by one
        array = _array(group, f"{side}_chunks_done")
        done = np.zeros(int(array.shape[0]), dtype=bool)
        for chunk in range(done.size):
            try:
                done[chunk] = bool(read_cells(array, (slice(chunk, chunk + 1),))[0])
            except UndecodableChunk:
                done[chunk] = False
        return done


def _read(group: zarr.Group, side: str, start: int, stop: int) -> NDArray[np.float32]:
    try:
        values = read_cells(_array(group, f"{side}_embeddings"), (slice(start, stop), slice(None)))
    except UndecodableChunk as exc:
        raise IncompleteMatrix(
            f"the {side} embeddings {start}-{stop - 1} {exc}; run the same `nncd matrix` command "
            "again to embed them again"
        ) from exc
    return np.asarray(values, dtype=np.float32)


def _check_chunk(group: zarr.Group, side: str, chunk: int) -> str | None:
    n = int(_array(group, f"{side}_embeddings").shape[0])
    try:
        values = read_cells(
            _array(group, f"{side}_embeddings"),
            (slice(chunk * CHUNK, min((chunk + 1) * CHUNK, n)), slice(None)),
        )
    except UndecodableChunk as exc:
        return str(exc)
    return _chunk_problem(np.asarray(values))


def _chunks_to_do(group: zarr.Group, side: str) -> list[int]:
    """Chunks without a marker, and done chunks that fail their check (their marker cleared)."""
    done = _done(group, side)
    todo = [int(c) for c in np.flatnonzero(~done)]
    for chunk in (int(c) for c in np.flatnonzero(done)):
        if _check_chunk(group, side, chunk) is not None:
            _array(group, f"{side}_chunks_done")[chunk] = False
            todo.append(chunk)
    return sorted(todo)


def _write_chunk(group: zarr.Group, side: str, chunk: int, values: NDArray[Any]) -> None:
    data = np.asarray(values, dtype=np.float32)
    start = chunk * CHUNK
    _array(group, f"{side}_embeddings")[start : start + data.shape[0], :] = data
    _array(group, f"{side}_chunks_done")[chunk] = True  # only after the data


__all__ = ["CHUNK", "EmbeddingPrefilter", "EmbeddingPrefilterReader"]
