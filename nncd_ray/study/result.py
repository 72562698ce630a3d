"""A study's table: one row per compressor (bits per byte beside accuracy), as JSON and Markdown,
with intervals, hubness and paired tests against the first compressor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nncd_ray.knn.report import EvaluationReport, format_number
from nncd_ray.knn.statistics import PairedComparison
from nncd_ray.study.config import StudyConfig


@dataclass(frozen=True, kw_only=True)
class StudyRow:
    """One compressor's line of the table. Rates in bits per UTF-8 byte, times in seconds."""

    compressor: str
    spec: dict[str, Any]
    store: str
    # total bits / total bytes over every document of the split (PROTOCOL.md's column)
    bits_per_byte: float | None
    # unweighted mean of per-document bits per byte
    bits_per_byte_mean_doc: float | None
    accuracy: dict[int, float]
    macro_f1: dict[int, float]
    # pairs/s of the matrix computed by this run (wall, incl. start-up); None if nothing was left
    pairs_per_second: float | None
    pairs_computed: int
    matrix_seconds: float
    evaluation_seconds: float
    report: EvaluationReport = field(repr=False)
    # the embedding baseline (nncd_ray.study.embedding_baseline), not a compressor: no bits per
    # byte, never the study's best
    baseline: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "compressor": self.compressor,
            "spec": self.spec,
            "store": self.store,
            "bits_per_byte": self.bits_per_byte,
            "bits_per_byte_mean_doc": self.bits_per_byte_mean_doc,
            "accuracy": {str(k): v for k, v in self.accuracy.items()},
            "accuracy_95ci": {str(m.k): list(m.accuracy_interval) for m in self.report.results},
            "macro_f1": {str(k): v for k, v in self.macro_f1.items()},
            "hubness": {str(h["k"]): h for h in self.report.hubness_dicts()},
            "hub_note": self.report.hub_note,
            "documents_truncated": self.report.documents_truncated,
            "truncation": self.report.truncation,
            "truncation_note": self.report.truncation_note,
            "pairs_per_second": self.pairs_per_second,
            "pairs_computed": self.pairs_computed,
            "matrix_seconds": self.matrix_seconds,
            "evaluation_seconds": self.evaluation_seconds,
            "baseline": self.baseline,
        }


@dataclass(frozen=True, kw_only=True)
class StudyResult:
    config: StudyConfig
    n_queries: int
    n_refs: int
    square: bool
    rows: tuple[StudyRow, ...]
    plots: tuple[str, ...]
    plots_skipped: str | None
    # the embedding baseline row (after the compressors in the tables), or why there is none
    baseline: StudyRow | None = None
    baseline_note: str | None = None

    @property
    def table_rows(self) -> tuple[StudyRow, ...]:
        """The compressors' rows, then the baseline's."""
        return self.rows + ((self.baseline,) if self.baseline is not None else ())

    def best(self) -> tuple[StudyRow, int]:
        """The compressor and k with the highest accuracy (first in table order on ties)."""
        return max(
            ((row, k) for row in self.rows for k in self.config.ks),
            key=lambda pair: pair[0].accuracy.get(pair[1], float("-inf")),
        )

    def paired(self, row: StudyRow) -> dict[int, PairedComparison]:
        """``row`` against the first compressor of the table on the same queries, per k (exact
        McNemar test); empty for the first row, or where the queries or labels differ."""
        baseline = self.rows[0].report
        report = row.report
        if (
            row is self.rows[0]
            or report.true_labels is None
            or report.query_ids != baseline.query_ids
        ):
            return {}
        return {
            m.k: PairedComparison.of(
                m.k, report.true_labels, report.predictions[m.k], baseline.predictions[m.k]
            )
            for m in report.results
            if m.k in baseline.predictions
        }

    def _row_dict(self, row: StudyRow) -> dict[str, Any]:
        paired = self.paired(row)
        return {
            **row.to_dict(),
            "paired_with": self.rows[0].compressor if paired else None,
            "paired": {str(k): c.to_dict() for k, c in paired.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        best_row, best_k = self.best()
        return {
            "protocol": self.config.protocol,
            "data": self.config.data,
            "variant": self.config.variant,
            "hubness_reduction": self.config.hubness_reduction,
            "ks": list(self.config.ks),
            "n_queries": self.n_queries,
            "n_refs": self.n_refs,
            "leave_one_out": self.square,
            "executor": self.config.executor,
            "tile": self.config.tile,
            "bits_per_byte_definition": "total bits / total UTF-8 bytes scored over every "
            "document of the split, each compressed on its own (PROTOCOL.md); a document the "
            "compressor truncated counts only its scored bytes (see documents_truncated)",
            "rows": [self._row_dict(row) for row in self.table_rows],
            "baseline_note": self.baseline_note,
            "candidates": self.config.candidates,
            "prefilter": self.config.prefilter if self.config.candidates else None,
            "best": {"compressor": best_row.compressor, "k": best_k},
            "plots": list(self.plots),
            "plots_skipped": self.plots_skipped,
        }

    def to_markdown(self) -> str:
        ks = self.config.ks
        shape = f"{self.n_queries} × {self.n_refs}" + (
            " square, leave-one-out" if self.square else " (queries × references)"
        )
        lines = [
            f"# Compression vs accuracy: {self.config.protocol}",
            "",
            f"{shape}; NCD variant {self.config.variant}; k-NN by (distance, reference index), "
            "majority vote, ties to the class whose nearest member is nearest.",
            "Bits per byte: total bits / total bytes over every document, each compressed alone "
            "(PROTOCOL.md); per doc: the unweighted mean of per-document rates.",
            *(
                [
                    "Neighbours by **mutual proximity** of the NCD (Gaussian form, Schnitzer "
                    "et al. 2012), not by the NCD itself: not PROTOCOL.md's k-NN."
                ]
                if self.config.hubness_reduction == "mp"
                else []
            ),
            "",
            "| compressor | bits/byte | per doc | "
            + " | ".join(f"acc k={k}" for k in ks)
            + " | "
            + " | ".join(f"macro-F1 k={k}" for k in ks)
            + " | pairs/s |",
            "|---|" + "---:|" * (3 + 2 * len(ks)),
        ]
        for row in self.table_rows:
            speed = "—" if row.pairs_per_second is None else f"{row.pairs_per_second:,.0f}"
            lines.append(
                f"| {row.compressor} | {format_number(row.bits_per_byte, 2)} | "
                f"{format_number(row.bits_per_byte_mean_doc, 2)} | "
                + " | ".join(format_number(row.accuracy.get(k)) for k in ks)
                + " | "
                + " | ".join(format_number(row.macro_f1.get(k)) for k in ks)
                + f" | {speed} |"
            )
        lines.append("")
        lines.append(
            "pairs/s: the pairs this run computed over its wall time, start-up included; "
            "— where the store was already complete."
        )
        if self.baseline is not None:
            lines.append(
                f"\n**{self.baseline.compressor}** is a baseline, not a compressor: k-NN with the "
                "same rule over 1 − cosine of all-MiniLM-L6-v2 sentence embeddings (mean "
                "pooling), what a user would pick instead of NCD."
            )
        elif self.baseline_note:
            lines.append(f"\n{self.baseline_note}.")
        if self.config.candidates is not None:
            lines.append(
                f"\nPruned matrices: each query's {self.config.candidates} candidates chosen by "
                f"prefilter {self.config.prefilter}; neighbours among them."
            )
        lines += [
            f"\n**Truncation, {row.compressor}:** {row.report.truncation_note}."
            for row in self.rows
            if row.report.truncation_note is not None
        ]
        lines += self._uncertainty_markdown()
        if self.plots:
            lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in self.plots]]
        elif self.plots_skipped:
            lines += ["", f"Plots skipped: {self.plots_skipped}"]
        return "\n".join(lines) + "\n"

    def _uncertainty_markdown(self) -> list[str]:
        """95% intervals, hubness and paired tests against the first row, per k."""
        ks = self.config.ks
        first = self.rows[0].compressor if self.rows else ""
        lines = [
            "",
            "## How sure: intervals, hubness, paired tests",
            "",
            "95% Wilson interval of each accuracy; N_k skewness (hubness: 0 when every reference "
            f"is a neighbour equally often); against {first} on the same queries: queries right "
            f"only with this compressor / only with {first}, and the exact McNemar p-value.",
            "",
            "| compressor | "
            + " | ".join(f"95% k={k}" for k in ks)
            + " | "
            + " | ".join(f"N_k skew k={k}" for k in ks)
            + " | "
            + " | ".join(f"vs {first} k={k}" for k in ks)
            + " |",
            "|---|" + "---:|" * (3 * len(ks)),
        ]
        for row in self.table_rows:
            intervals = {m.k: m.accuracy_interval for m in row.report.results}
            skew = {h.k: h.skewness for h in row.report.hubness}
            paired = self.paired(row)
            cells = [
                f"{intervals[k][0]:.3f}–{intervals[k][1]:.3f}" if k in intervals else "n/a"
                for k in ks
            ]
            cells += [f"{skew[k]:.2f}" if k in skew else "n/a" for k in ks]
            cells += [
                f"{paired[k].only_this}/{paired[k].only_baseline}, p={paired[k].p_value:.2f}"
                if k in paired
                else "—"
                for k in ks
            ]
            lines.append(f"| {row.compressor} | " + " | ".join(cells) + " |")
        notes = [
            f"- **Hub, {row.compressor}:** {row.report.hub_note}."
            for row in self.table_rows
            if row.report.hub_note is not None
        ]
        return [*lines, "", *notes] if notes else lines
