"""Labels as integer codes: a fixed, total label order shared by references and queries."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nncd_ray.errors import InputError

# a code that is not a class: no neighbour, or no prediction
NO_LABEL = -1


def _label_sort_key(label: Hashable) -> tuple[int, float, str]:
    """Numbers first in numeric order, then everything else by its string (ints and strs never mix
    in one input, but the order must be total anyway)."""
    if isinstance(label, bool | int | float | np.integer | np.floating):
        return (0, float(label), "")
    return (1, 0.0, str(label))


def _plain(label: object) -> Hashable:
    """numpy scalars -> Python ``int``/``float``/``str`` (JSON-able, hashable, comparable)."""
    if isinstance(label, np.generic):
        value = label.item()
        return value if isinstance(value, Hashable) else str(value)
    if isinstance(label, Hashable):
        return label
    raise InputError(f"label {label!r} is not hashable")


@dataclass(frozen=True, kw_only=True)
class LabelCodec:
    """A fixed label order; ``codes`` maps labels to ``0..n-1`` in that order."""

    labels: tuple[Hashable, ...]

    @classmethod
    def from_labels(cls, *label_sets: Iterable[object]) -> LabelCodec:
        """The sorted union of the labels given (numbers numerically, strings lexicographically)."""
        seen = {_plain(label) for labels in label_sets for label in labels}
        return cls(labels=tuple(sorted(seen, key=_label_sort_key)))

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, labels: Iterable[object]) -> NDArray[np.int64]:
        """``(n,) int64`` codes; a label outside the order is an :class:`InputError`."""
        index = {label: code for code, label in enumerate(self.labels)}
        out: list[int] = []
        for label in labels:
            try:
                out.append(index[_plain(label)])
            except KeyError:
                raise InputError(f"label {label!r} is not one of {list(self.labels)}") from None
        return np.asarray(out, dtype=np.int64).reshape(len(out))

    def decode(self, codes: ArrayLike) -> list[Hashable | None]:
        """Labels of ``codes``; :data:`NO_LABEL` becomes ``None``."""
        return [None if int(c) < 0 else self.labels[int(c)] for c in np.asarray(codes).ravel()]
