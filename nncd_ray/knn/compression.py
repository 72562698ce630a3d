"""Bits per byte of a store's compressor over single documents, from the stored C(x) and the
bytes each code length covers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.matrix.store.truncation import count_sides
from nncd_ray.ncd import bits_per_byte, corpus_bits_per_byte

if TYPE_CHECKING:
    from nncd_ray.matrix.store.reader import StoreReader


def _rates(bits: NDArray[np.float64], n_bytes: NDArray[np.int64]) -> dict[str, float | int | None]:
    known = np.isfinite(bits) & (n_bytes > 0)
    if not known.any():
        return {"bits_per_byte": None, "bits_per_byte_mean_doc": None, "n_documents": 0}
    return {
        "bits_per_byte": corpus_bits_per_byte(bits[known], n_bytes[known]),
        "bits_per_byte_mean_doc": float(np.mean(bits_per_byte(bits[known], n_bytes[known]))),
        "n_documents": int(known.sum()),
        "total_bits": float(bits[known].sum()),
        "total_bytes": int(n_bytes[known].sum()),
    }


def compression_summary(reader: StoreReader) -> dict[str, Any]:
    """Bits per byte of the compressor over single documents, C(x) / bytes scored.

    ``bits_per_byte``: total bits / total bytes over every distinct document of the store (rows and
    columns of a rectangular store, the one set of a square store): the figure of
    ``shared/bench/PROTOCOL.md`` (its "mean over docs" column is this byte-weighted mean; e.g.
    agnews-small gzip 6.079). ``bits_per_byte_mean_doc``: the unweighted mean of per-document rates.
    The bytes are those each code length covers (``*_scored_bytes``): all of a document unless the
    compressor truncated it; ``truncation`` counts the truncated documents
    (:class:`~nncd_ray.matrix.store.truncation.TruncationCount`); stores without scored bytes use
    the documents' full bytes (``truncation.recorded`` false). Documents whose C(x) is not computed
    yet (NaN) are left out and not counted in ``n_documents``. Also given separately for ``rows``
    and ``cols``.
    """
    sides = {side: reader.document_bytes(side) for side in ("row", "col")}
    row_bytes, col_bytes = (
        full if scored is None else np.where(scored >= 0, scored, full)
        for full, scored in (sides["row"], sides["col"])
    )
    if reader.square:
        everything = _rates(reader.row_bits, row_bytes)
    else:
        everything = _rates(
            np.concatenate([reader.row_bits, reader.col_bits]),
            np.concatenate([row_bytes, col_bytes]),
        )
    return {
        **everything,
        "rows": _rates(reader.row_bits, row_bytes),
        "cols": _rates(reader.col_bits, col_bytes),
        "truncation": count_sides(sides, square=reader.square).to_dict(),
    }
