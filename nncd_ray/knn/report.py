"""The k-NN evaluation report: JSON, readable Markdown, and per-query predictions (JSON Lines).

JSON (``EvaluationReport.to_dict``)::

    {"store", "variant", "hubness_reduction", "square", "ks", "n_rows", "n_queries", "n_refs",
     "candidates",  # a sparse store's candidates per query, else null
     "results": [{"k", "accuracy", "accuracy_95ci", "macro_f1", "n_queries", "n_correct",
                  "n_unpredicted", "labels", "confusion"}, ...],  # empty without query labels
     "hubness": [{"k", "n_queries", "n_refs", "skewness", "max_count", "never",
                  "top": [{"col", "id", "label", "count"}, ...]}, ...],
     "hub_note", "bits_per_byte", "bits_per_byte_mean_doc", "compression": {...},
     "documents_truncated", "truncation_note",
     "compressor": {...}, "skipped_rows": [...], "block_rows", "seconds"}

Bits per byte divides by the bytes each code length covers; ``documents_truncated`` counts the
documents the compressor cut (``compression.truncation`` has the bytes, see
:mod:`nncd_ray.matrix.store.truncation`) and ``truncation_note`` (or null) says so in one line.

``accuracy_95ci`` is the Wilson score interval; ``hubness`` describes how unevenly the references
serve as neighbours (:class:`nncd_ray.knn.statistics.Hubness`): the skewness of their k-occurrence,
the most used references and how many are never among any query's k nearest. ``hub_note`` (or null)
says when one reference is the nearest neighbour of at least :data:`HUB_SHARE` of the queries (and
of at least :data:`HUB_MIN_QUERIES`) under the protocol's k-NN, and suggests mutual proximity.

Predictions, one JSON object per evaluated query, in row order::

    {"row": 17, "id": "4211", "label": 3, "predicted": {"1": 3, "3": 2, "5": 3, "7": 3}}
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nncd_ray.knn.statistics import Hubness, KNNMetrics
from nncd_ray.matrix.store.truncation import TruncationCount

# A reference that is the nearest neighbour of this share of the queries (and of at least
# HUB_MIN_QUERIES of them) gets a note: with four balanced classes it alone decides a tenth of the
# predictions at k = 1, whatever the queries' classes.
HUB_SHARE = 0.10
HUB_MIN_QUERIES = 10


def _ranges(rows: Iterable[int]) -> str:
    """``0-63, 128-191`` for a sorted list of row indices."""
    parts: list[str] = []
    start = previous = None
    for row in rows:
        if start is None:
            start = previous = row
        elif previous is not None and row == previous + 1:
            previous = row
        else:
            parts.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = previous = row
    if start is not None:
        parts.append(f"{start}" if start == previous else f"{start}-{previous}")
    return ", ".join(parts)


def format_number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or ``n/a`` when there is none: how reports and study
    tables print rates and accuracies."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def describe_compressor(compressor: dict[str, Any] | None) -> str:
    """``gzip level 9`` from the store's compressor fingerprint (``"unknown"`` when absent)."""
    if not compressor:
        return "unknown"
    name = compressor.get("compressor") or compressor.get("name") or "?"
    shown = [
        f"{key} {compressor[key]}"
        for key in ("level", "preset", "model", "revision", "dtype", "max_doc_tokens")
        if key in compressor
    ]
    return " ".join([str(name), *shown])


@dataclass(frozen=True, kw_only=True)
class EvaluationReport:
    """What :func:`nncd_ray.knn.evaluate.evaluate_store` found. ``predictions[k][i]`` is the label
    predicted for the i-th evaluated query (row ``query_rows[i]``), ``None`` without neighbours."""

    store: str
    variant: str
    square: bool
    ks: tuple[int, ...]
    # rows in the store / rows classified / columns (references)
    n_rows: int
    n_queries: int
    n_refs: int
    results: tuple[KNNMetrics, ...]
    # see nncd_ray.knn.compression.compression_summary
    compression: dict[str, Any]
    compressor: dict[str, Any] | None
    skipped_rows: tuple[int, ...]
    query_ids: tuple[str, ...]
    query_rows: tuple[int, ...]
    true_labels: tuple[Hashable, ...] | None
    predictions: dict[int, tuple[Hashable | None, ...]]
    block_rows: int
    # wall time of the evaluation
    seconds: float
    # one per k, over the evaluated queries
    hubness: tuple[Hubness, ...] = ()
    # "none" (the protocol's k-NN over NCD) or "mp" (over its mutual proximity)
    hubness_reduction: str = "none"
    # the store's columns, to name the hubs
    reference_ids: tuple[str, ...] = ()
    reference_labels: tuple[Hashable, ...] = ()
    # a sparse store's candidates per query (neighbours found among them); None: every reference
    candidates: int | None = None

    @property
    def truncation(self) -> dict[str, Any]:
        """:class:`~nncd_ray.matrix.store.truncation.TruncationCount` as a dict (empty for reports
        built without one)."""
        value = self.compression.get("truncation")
        return dict(value) if isinstance(value, dict) else {}

    @property
    def documents_truncated(self) -> int:
        return int(self.truncation.get("documents") or 0)

    @property
    def truncation_note(self) -> str | None:
        """One line when the compressor truncated documents, or when an LM store predates the
        scored-bytes record (its truncation is unknown); else ``None``."""
        truncation = self.truncation
        if self.documents_truncated:
            return TruncationCount(**truncation).warning()
        name = (self.compressor or {}).get("compressor")
        if truncation and not truncation.get("recorded") and name == "lm":
            return (
                "this store predates the record of scored bytes: documents the model truncated "
                "are not known, and bits per byte divides by every document's full bytes"
            )
        return None

    @property
    def bits_per_byte(self) -> float | None:
        """Total bits / total bytes over the store's documents (PROTOCOL.md's figure)."""
        value = self.compression.get("bits_per_byte")
        return None if value is None else float(value)

    def result(self, k: int) -> KNNMetrics:
        for metrics in self.results:
            if metrics.k == k:
                return metrics
        raise KeyError(f"no result for k={k} (the queries may have no labels)")

    def hubness_dicts(self) -> list[dict[str, Any]]:
        """:attr:`hubness` as JSON-able dicts, each hub named by its id and label."""
        out = []
        for hubs in self.hubness:
            record = hubs.to_dict()
            record["top"] = [
                {
                    "col": col,
                    "id": self.reference_ids[col] if col < len(self.reference_ids) else None,
                    "label": (
                        self.reference_labels[col] if col < len(self.reference_labels) else None
                    ),
                    "count": count,
                }
                for col, count in hubs.top
            ]
            out.append(record)
        return out

    @property
    def hub_note(self) -> str | None:
        """One line when a single reference is the nearest neighbour (k = 1, plain NCD) of at
        least :data:`HUB_SHARE` of the queries, naming it and the remedy; else ``None``."""
        if self.hubness_reduction != "none":
            return None
        first = next((hubs for hubs in self.hubness if hubs.k == 1), None)
        if first is None or not first.top or first.n_queries == 0:
            return None
        col, count = first.top[0]
        if count < max(HUB_MIN_QUERIES, HUB_SHARE * first.n_queries):
            return None
        name = self.reference_ids[col] if col < len(self.reference_ids) else str(col)
        return (
            f"reference {name!r} (column {col}) is the nearest neighbour of {count} of "
            f"{first.n_queries} queries (N_1 skewness {first.skewness:.1f}): a hub decides these "
            "predictions whatever their class; `--hubness-reduction mp` discounts hubs "
            "(mutual proximity, not the protocol's k-NN)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "variant": self.variant,
            "hubness_reduction": self.hubness_reduction,
            "square": self.square,
            "leave_one_out": self.square,
            "ks": list(self.ks),
            "n_rows": self.n_rows,
            "n_queries": self.n_queries,
            "n_refs": self.n_refs,
            "candidates": self.candidates,
            "results": [m.to_dict() for m in self.results],
            "hubness": self.hubness_dicts(),
            "hub_note": self.hub_note,
            "bits_per_byte": self.bits_per_byte,
            "bits_per_byte_mean_doc": self.compression.get("bits_per_byte_mean_doc"),
            "documents_truncated": self.documents_truncated,
            "truncation_note": self.truncation_note,
            "compression": self.compression,
            "compressor": self.compressor,
            "skipped_rows": list(self.skipped_rows),
            "block_rows": self.block_rows,
            "seconds": self.seconds,
        }

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def write_predictions(self, path: str | Path) -> None:
        """One JSON object per evaluated query (see the module docstring)."""
        with Path(path).open("w", encoding="utf-8") as out:
            for i, (row, doc_id) in enumerate(zip(self.query_rows, self.query_ids, strict=True)):
                record = {
                    "row": row,
                    "id": doc_id,
                    "label": None if self.true_labels is None else self.true_labels[i],
                    "predicted": {str(k): self.predictions[k][i] for k in self.ks},
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")

    def write_markdown(self, path: str | Path) -> None:
        Path(path).write_text(self.to_markdown(), encoding="utf-8")

    def _hubness_markdown(self) -> list[str]:
        if not self.hubness:
            return []
        lines = [
            "",
            "Hubness: N_k = how many queries have a reference among their k nearest; its "
            "skewness is 0 for an even spread and large when a few references are near to "
            "everything.",
            "",
            "| k | N_k skewness | max N_k | never a neighbour | most used (column: id, label, "
            "N_k) |",
            "|---:|---:|---:|---:|---|",
        ]
        for record in self.hubness_dicts():
            top = "; ".join(
                f"{hub['col']}: {hub['id']}, {hub['label']}, {hub['count']}"
                for hub in record["top"]
            )
            lines.append(
                f"| {record['k']} | {record['skewness']:.2f} | {record['max_count']} | "
                f"{record['never']}/{record['n_refs']} | {top} |"
            )
        note = self.hub_note
        if note is not None:
            lines += ["", f"**Hub:** {note}."]
        return lines

    def to_markdown(self) -> str:
        """A readable report: settings, accuracy table, bits per byte, confusion matrices."""
        shape = "square, leave-one-out" if self.square else "queries × references"
        lines = [
            f"# k-NN over {self.store}",
            "",
            f"- compressor: {describe_compressor(self.compressor)}; NCD variant: {self.variant}",
            f"- matrix: {self.n_rows} × {self.n_refs} ({shape}); "
            f"{self.n_queries} queries classified",
        ]
        if self.candidates is not None:
            lines.append(
                f"- sparse store: neighbours among each query's {self.candidates} candidates "
                "(the prefilter's choice; the scorer computed only those pairs)"
            )
        if self.hubness_reduction == "mp":
            lines.append(
                "- neighbours by mutual proximity of the NCD (Gaussian form, Schnitzer et al. "
                "2012), not by the NCD itself: this is not the protocol's k-NN"
            )
        compression = self.compression
        if compression.get("bits_per_byte") is not None:
            lines.append(
                f"- bits per byte: {format_number(compression['bits_per_byte'])} (total bits / "
                f"total bytes scored over {compression['n_documents']} documents; mean of "
                f"per-document rates {format_number(compression.get('bits_per_byte_mean_doc'))})"
            )
        if self.truncation_note is not None:
            lines.append(f"- **truncation:** {self.truncation_note}")
        if self.skipped_rows:
            lines.append(
                f"- skipped {len(self.skipped_rows)} rows not fully computed: "
                f"{_ranges(self.skipped_rows)}"
            )
        lines.append("")
        if not self.results:
            lines.append("The queries have no labels: predictions only, no accuracy.")
            return "\n".join(lines) + "\n"
        lines += [
            "| k | accuracy | 95% interval | macro-F1 | correct |",
            "|---:|---:|---:|---:|---:|",
        ]
        for m in self.results:
            unpredicted = f" ({m.n_unpredicted} without neighbours)" if m.n_unpredicted else ""
            low, high = m.accuracy_interval
            lines.append(
                f"| {m.k} | {m.accuracy:.3f} | {low:.3f}–{high:.3f} | {m.macro_f1:.3f} | "
                f"{m.n_correct}/{m.n_queries}{unpredicted} |"
            )
        lines += ["", "95% interval: Wilson score interval of the accuracy over these queries."]
        lines += self._hubness_markdown()
        for m in self.results:
            lines += ["", f"Confusion matrix, k={m.k} (rows: true label, columns: predicted)", ""]
            lines.append("| true \\ predicted | " + " | ".join(str(x) for x in m.labels) + " |")
            lines.append("|---|" + "---:|" * len(m.labels))
            for label, row in zip(m.labels, m.confusion, strict=True):
                lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
        return "\n".join(lines) + "\n"
