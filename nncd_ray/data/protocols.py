"""The fixed benchmark splits of ``shared/bench/PROTOCOL.md`` over the AG News test set.

Deterministic, no randomness: walk ``test.csv`` in file order with one counter per class; the first
``R`` documents of each class are references, the next ``Q`` of each class are queries. Matrix rows
are the queries in file order, columns the references in file order. The square ``agnews-self-1k``
takes the first 250 documents of each class as one set (leave-one-out k-NN), so it has no separate
references.

Document text is ``title + " " + description``, the label is the first column (int), and the id of a
document is its row number in the file counted from 0 (the file has no header and one row per line,
so this is the line number minus one) — the same ids ``load_corpus`` gives the whole file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nncd_ray.data.agnews import load_agnews
from nncd_ray.data.corpus import Corpus
from nncd_ray.errors import ConfigError, InputError


@dataclass(frozen=True, kw_only=True)
class Protocol:
    """One split; ``square``: one set of ``refs_per_class`` documents per class (self-matrix)."""

    name: str
    # documents per class that are references (or, for a square protocol, the whole set)
    refs_per_class: int
    # documents per class that are queries, taken after the references
    queries_per_class: int
    square: bool = False
    # what the split is for (shown by the CLI)
    meant_for: str = ""


@dataclass(frozen=True, kw_only=True)
class ProtocolSplit:
    """Queries (matrix rows) and references (columns); ``refs`` is None for a square protocol."""

    name: str
    queries: Corpus
    refs: Corpus | None


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(name="agnews-small", refs_per_class=25, queries_per_class=50, meant_for="CPU, CI"),
        Protocol(
            name="agnews-medium",
            refs_per_class=100,
            queries_per_class=250,
            meant_for="CPU with a small model, GPU smoke",
        ),
        Protocol(
            name="agnews-full", refs_per_class=1000, queries_per_class=900, meant_for="GPU clusters"
        ),
        Protocol(
            name="agnews-self-1k",
            refs_per_class=250,
            queries_per_class=0,
            square=True,
            meant_for="square / symmetric path, leave-one-out",
        ),
    )
}


def split_positions(
    labels: tuple[int | str, ...], protocol: Protocol
) -> tuple[list[int], list[int]]:
    """(query positions, reference positions), each in file order, by per-class counters."""
    seen: dict[int | str, int] = {}
    queries: list[int] = []
    refs: list[int] = []
    for position, label in enumerate(labels):
        count = seen.get(label, 0)
        seen[label] = count + 1
        if count < protocol.refs_per_class:
            refs.append(position)
        elif count < protocol.refs_per_class + protocol.queries_per_class:
            queries.append(position)
    need = protocol.refs_per_class + protocol.queries_per_class
    short = {label: count for label, count in seen.items() if count < need}
    if short:
        raise InputError(
            f"protocol {protocol.name} needs {need} documents per class; the file has only "
            + ", ".join(
                f"{count} of class {label}" for label, count in sorted(short.items(), key=str)
            )
        )
    return queries, refs


def load_protocol(name: str, path: str | Path) -> ProtocolSplit:
    """The split ``name`` of the AG News test CSV at ``path`` (file or its folder)."""
    try:
        protocol = PROTOCOLS[name]
    except KeyError:
        raise ConfigError(
            f"unknown protocol {name!r}; choose one of: {', '.join(PROTOCOLS)}"
        ) from None
    corpus = load_agnews(path)
    if corpus.labels is None:  # cannot happen: label_field is given explicitly
        raise InputError(f"{corpus.source} has no labels")
    queries, refs = split_positions(corpus.labels, protocol)
    if protocol.square:
        return ProtocolSplit(
            name=name, queries=corpus.subset(refs, source=f"{name} ({corpus.source})"), refs=None
        )
    return ProtocolSplit(
        name=name,
        queries=corpus.subset(queries, source=f"{name} queries ({corpus.source})"),
        refs=corpus.subset(refs, source=f"{name} references ({corpus.source})"),
    )


__all__ = [
    "PROTOCOLS",
    "Protocol",
    "ProtocolSplit",
    "load_protocol",
    "split_positions",
]
