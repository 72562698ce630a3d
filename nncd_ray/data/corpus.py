"""The in-memory document set: ids, texts and optional labels, in a fixed order.

A :class:`Corpus` is what the matrix engine, the scorers and the k-NN stage agree on. Its
:meth:`Corpus.content_hash` covers ids, texts, labels and their order, so a store can refuse to
resume with other documents or another order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from nncd_ray.errors import InputError

Label = str | int


@dataclass(frozen=True, kw_only=True)
class Corpus:
    """Documents in order. ``labels`` is ``None`` when the input has none."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: tuple[Label, ...] | None = None
    # where the documents came from, for messages and store attributes (not part of the hash)
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.texts):
            raise InputError(f"{len(self.ids)} ids for {len(self.texts)} texts")
        if self.labels is not None and len(self.labels) != len(self.texts):
            raise InputError(f"{len(self.labels)} labels for {len(self.texts)} texts")
        if not self.texts:
            raise InputError(f"no documents in {self.source or 'the input'}")
        seen: dict[str, int] = {}
        for position, doc_id in enumerate(self.ids):
            if doc_id in seen:
                raise InputError(
                    f"duplicate id {doc_id!r} at documents {seen[doc_id]} and {position}"
                    f" of {self.source or 'the input'}"
                )
            seen[doc_id] = position
        for position, text in enumerate(self.texts):
            # whitespace alone is no document either: nothing to compress but separators
            if not text.strip():
                what = "is empty" if not text else f"holds only whitespace ({text[:20]!r})"
                raise InputError(
                    f"document {self.ids[position]!r} (number {position}) of "
                    f"{self.source or 'the input'} {what}; remove it or give it text"
                )

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        labels: Sequence[Label] | None = None,
        source: str = "",
    ) -> Corpus:
        """Build a corpus; ids default to the row numbers ``"0"``, ``"1"``, …"""
        return cls(
            ids=tuple(str(i) for i in (ids if ids is not None else range(len(texts)))),
            texts=tuple(texts),
            labels=tuple(labels) if labels is not None else None,
            source=source,
        )

    def __len__(self) -> int:
        return len(self.texts)

    def content_hash(self) -> str:
        """sha256 over ids, texts and labels in order (hex)."""
        digest = hashlib.sha256()
        for position, (doc_id, text) in enumerate(zip(self.ids, self.texts, strict=True)):
            label = self.labels[position] if self.labels is not None else None
            digest.update(json.dumps([doc_id, text, label], ensure_ascii=False).encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()

    def total_bytes(self) -> int:
        """Total UTF-8 bytes of all texts (the denominator of bits per byte)."""
        return sum(len(t.encode("utf-8")) for t in self.texts)

    def subset(self, positions: Sequence[int], *, source: str | None = None) -> Corpus:
        return Corpus(
            ids=tuple(self.ids[i] for i in positions),
            texts=tuple(self.texts[i] for i in positions),
            labels=tuple(self.labels[i] for i in positions) if self.labels is not None else None,
            source=self.source if source is None else source,
        )
