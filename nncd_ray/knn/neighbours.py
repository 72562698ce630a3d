"""k-nearest-neighbour classification over a block of distances: pure numpy.

The rule (``shared/bench/PROTOCOL.md``), exactly:

- neighbours of a query are the references in ascending order of ``(distance, reference index)``;
  the order is total, so equal distances are resolved by the lower reference index;
- a NaN distance is never a neighbour (a cell not computed, or the diagonal in leave-one-out);
- the prediction is the majority label of the first ``k`` neighbours; a tie between classes goes to
  the tied class whose nearest member comes first in that order. Never "top-2" (counting a query
  correct when any tied class is right).

Top-k uses a partial sort (:func:`numpy.argpartition`, O(n) per row) for the largest ``k`` once;
only the ``k`` chosen are then ordered, and every smaller ``k`` reuses the same neighbours. The
rare rows where equal distances straddle the k-th place are redone exactly with a stable sort of the
tied candidates, so that the result never depends on argpartition's internal order.

Labels are handled as integer codes into a fixed label order
(:class:`~nncd_ray.knn.labels.LabelCodec`); ``-1`` marks "no
neighbour" / "no prediction" (a query whose every distance is NaN).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nncd_ray.errors import ConfigError, InputError
from nncd_ray.knn.labels import NO_LABEL


def check_ks(ks: Iterable[int], n_candidates: int | None = None) -> tuple[int, ...]:
    """Validated, sorted, de-duplicated ``k`` values; each must be at least 1 and at most the number
    of candidate neighbours (references, minus one in leave-one-out) when that is given."""
    values: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or int(k) < 1:
            raise ConfigError(f"k must be a positive integer, not {k!r}")
        values.append(int(k))
    if not values:
        raise ConfigError("give at least one k")
    out = tuple(sorted(set(values)))
    if n_candidates is not None and out[-1] > n_candidates:
        raise ConfigError(
            f"k={out[-1]} needs at least {out[-1]} candidate neighbours, but each query has only "
            f"{n_candidates}; choose a smaller k"
        )
    return out


def mask_own_cells(block: NDArray[np.float64], diagonal_offset: int | None) -> NDArray[np.float64]:
    """Set each query's own cell ``(b, diagonal_offset + b)`` of a row block of a square
    self-matrix to NaN, in place (leave-one-out); nothing when ``diagonal_offset`` is None."""
    if diagonal_offset is not None:
        rows = np.arange(block.shape[0])
        cols = rows + diagonal_offset
        inside = (cols >= 0) & (cols < block.shape[1])
        block[rows[inside], cols[inside]] = np.nan
    return block


def reference_neighbours(
    distances: ArrayLike,
    reference_codes: NDArray[np.int64],
    k: int,
    *,
    diagonal_offset: int | None,
    overwrite_input: bool,
) -> NDArray[np.int64]:
    """:func:`top_k_neighbours` indices, after checking there is one label per column."""
    n_columns = np.shape(distances)[-1]
    if reference_codes.shape[0] != n_columns:
        raise InputError(
            f"{reference_codes.shape[0]} reference labels for {n_columns} reference columns"
        )
    indices, _ = top_k_neighbours(
        distances, k, diagonal_offset=diagonal_offset, overwrite_input=overwrite_input
    )
    return indices


def top_k_neighbours(
    distances: ArrayLike,
    k: int,
    *,
    diagonal_offset: int | None = None,
    overwrite_input: bool = False,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The ``k`` nearest references of every query, in ``(distance, reference index)`` order.

    ``distances``: ``(B, n_refs)`` (any float dtype; NaN = never a neighbour). ``diagonal_offset``:
    for a row block of a square self-matrix, the global index of the block's first row; the cell
    ``(b, diagonal_offset + b)`` (the query itself) is then excluded (leave-one-out).

    Returns ``(indices (B, k) int64, distances (B, k) float64)``; where a row has fewer than ``k``
    usable references the tail holds ``-1`` and NaN. ``overwrite_input``: a float64 array given
    may be used as scratch space (saves one copy of the block; its contents are then undefined).
    """
    given = np.asarray(distances)
    reuse = overwrite_input and given.dtype == np.float64 and given.ndim == 2
    work = given if reuse and given.flags.writeable else np.array(given, np.float64, ndmin=2)
    if work.ndim != 2:
        raise InputError(f"distances must be a (queries, references) matrix, not {work.shape}")
    n_rows, n_refs = work.shape
    if k < 1:
        raise ConfigError(f"k must be a positive integer, not {k}")
    mask_own_cells(work, diagonal_offset)
    invalid = np.isnan(work)
    # NaN sorts last (after +inf, which stays a legitimate if useless distance): use +inf as the
    # partition key and the invalid flag as a secondary key wherever that matters
    work[invalid] = np.inf
    take = min(k, n_refs)
    out_index = np.full((n_rows, k), -1, dtype=np.int64)
    out_dist = np.full((n_rows, k), np.nan, dtype=np.float64)
    if n_rows == 0 or n_refs == 0:
        return out_index, out_dist

    if take < n_refs:
        chosen = np.argpartition(work, take - 1, axis=1)[:, :take]
    else:
        chosen = np.broadcast_to(np.arange(n_refs), (n_rows, n_refs)).copy()
    chosen_dist = np.take_along_axis(work, chosen, axis=1)
    kth = chosen_dist.max(axis=1)
    # exact unless values equal to the k-th straddle the cut (NaN-as-inf included)
    n_at_most = np.count_nonzero(work <= kth[:, None], axis=1)
    ambiguous = n_at_most > take

    chosen_invalid = np.take_along_axis(invalid, chosen, axis=1)
    order = np.lexsort((chosen, chosen_invalid, chosen_dist), axis=1)
    chosen = np.take_along_axis(chosen, order, axis=1)
    for row in np.flatnonzero(ambiguous):
        candidates = np.flatnonzero(work[row] <= kth[row])
        ranking = np.lexsort((candidates, invalid[row, candidates], work[row, candidates]))
        chosen[row] = candidates[ranking[:take]]

    usable = ~np.take_along_axis(invalid, chosen, axis=1)
    out_index[:, :take] = np.where(usable, chosen, -1)
    out_dist[:, :take] = np.where(usable, np.take_along_axis(work, chosen, axis=1), np.nan)
    return out_index, out_dist


def vote(neighbour_codes: ArrayLike, n_classes: int) -> NDArray[np.int64]:
    """Majority label of each row of neighbours given nearest first.

    ``neighbour_codes``: ``(B, k)`` int class codes in neighbour order, :data:`NO_LABEL` for a
    missing neighbour. Ties between classes go to the class whose first member comes earliest.
    Returns ``(B,) int64`` codes (:data:`NO_LABEL` for a row without any neighbour).
    """
    codes = np.asarray(neighbour_codes, dtype=np.int64)
    if codes.ndim != 2:
        raise InputError(f"neighbour codes must be (queries, k), not shape {codes.shape}")
    n_rows, k = codes.shape
    if n_rows == 0:
        return np.zeros(0, dtype=np.int64)
    valid = codes >= 0
    row_of = np.broadcast_to(np.arange(n_rows)[:, None], codes.shape)
    rank_of = np.broadcast_to(np.arange(k)[None, :], codes.shape)
    counts = np.zeros((n_rows, n_classes), dtype=np.int64)
    np.add.at(counts, (row_of[valid], codes[valid]), 1)
    first_rank = np.full((n_rows, n_classes), k, dtype=np.int64)
    np.minimum.at(first_rank, (row_of[valid], codes[valid]), rank_of[valid])
    # more votes wins; among equal votes the smaller first rank (ranks are < k, so this is exact)
    score = counts * (k + 1) + (k - first_rank)
    winner = np.argmax(score, axis=1).astype(np.int64)
    winner[counts.sum(axis=1) == 0] = NO_LABEL
    return winner


def predict_codes(
    distances: ArrayLike,
    reference_codes: ArrayLike,
    ks: Sequence[int],
    n_classes: int,
    *,
    diagonal_offset: int | None = None,
    overwrite_input: bool = False,
) -> dict[int, NDArray[np.int64]]:
    """Predicted class codes for every ``k`` in one pass (neighbours found once for ``max(ks)``).

    ``distances``: ``(B, n_refs)``; ``reference_codes``: ``(n_refs,)`` int codes. Returns
    ``{k: (B,) int64}``, :data:`NO_LABEL` where a query has no usable neighbour.
    """
    ref_codes = np.asarray(reference_codes, dtype=np.int64)
    ks = check_ks(ks)
    indices = reference_neighbours(
        distances,
        ref_codes,
        ks[-1],
        diagonal_offset=diagonal_offset,
        overwrite_input=overwrite_input,
    )
    return vote_neighbours(indices, ref_codes, ks, n_classes)


def vote_neighbours(
    indices: NDArray[np.int64],
    reference_codes: NDArray[np.int64],
    ks: Sequence[int],
    n_classes: int,
) -> dict[int, NDArray[np.int64]]:
    """``{k: (B,) codes}`` from the neighbours of :func:`top_k_neighbours` (``-1`` = none)."""
    neighbour_codes = np.where(indices >= 0, reference_codes[np.maximum(indices, 0)], NO_LABEL)
    return {k: vote(neighbour_codes[:, :k], n_classes) for k in ks}


def k_occurrence(indices: NDArray[np.int64], k: int, n_refs: int) -> NDArray[np.int64]:
    """``(n_refs,)``: how many rows of ``indices`` (neighbours nearest first, ``-1`` = none) have
    each reference among their first ``k`` neighbours: the k-occurrence N_k of hubness studies."""
    first = indices[:, :k]
    return np.bincount(first[first >= 0], minlength=n_refs).astype(np.int64)
