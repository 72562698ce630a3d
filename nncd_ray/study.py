"""Compression-vs-accuracy study: one matrix per compressor on a benchmark split, k-NN, one table.

For every compressor the study computes (or resumes: the same store is reused) the NCD matrix of a
``shared/bench/PROTOCOL.md`` split through the matrix engine, classifies the queries with the k-NN
stage and collects bits per byte, accuracy and macro-F1 per k, and pairs/s, into ``study.json`` and
``study.md``; PNG plots (accuracy against bits per byte, the best compressor's confusion matrix, a
block of its NCD matrix) when matplotlib is installed. The Neural NCD paper's point is that
accuracy does not follow compression rate, so the two are always reported side by side.

Output folder::

    <out>/<compressor>.zarr              the matrix store (resumable)
    <out>/<compressor>.report.json       full k-NN report (confusion matrices, …)
    <out>/<compressor>.predictions.jsonl per-query predictions
    <out>/study.json, <out>/study.md     the table
    <out>/*.png                          plots
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nncd_ray.errors import ConfigError
from nncd_ray.evaluate import EvaluationConfig, evaluate_store
from nncd_ray.knn import PairedComparison, check_ks
from nncd_ray.knn_report import EvaluationReport
from nncd_ray.scorers import ScorerSpec, available

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CompressorChoice:
    """One column of the study: a table label (also the store's file name) and its scorer."""

    label: str
    spec: ScorerSpec


def parse_compressors(text: str) -> tuple[CompressorChoice, ...]:
    """``"gzip,bz2,lm:/models/gpt2"`` -> choices. ``lm`` alone is the embedded model; ``lm:MODEL``
    names a model directory or hub id (its last path part becomes the label ``lm-<name>``)."""
    choices: list[CompressorChoice] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, argument = item.partition(":")
        if name not in available():
            raise ConfigError(
                f"unknown compressor {name!r} in --compressors; choose from "
                f"{', '.join(available())}"
            )
        if sep and name != "lm":
            raise ConfigError(f"{item!r}: only lm takes an argument (lm:MODEL)")
        if name == "lm" and argument:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "-", argument.rstrip("/").split("/")[-1]).strip("-")
            choices.append(
                CompressorChoice(
                    label=f"lm-{slug or 'model'}",
                    spec=ScorerSpec(name="lm", options={"model": argument}),
                )
            )
        else:
            choices.append(CompressorChoice(label=name, spec=ScorerSpec(name=name, options={})))
    if not choices:
        raise ConfigError("--compressors needs at least one compressor, e.g. gzip,bz2,lzma,zstd")
    labels = [c.label for c in choices]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"compressor {', '.join(repeated)} given more than once")
    return tuple(choices)


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """A study run."""

    # a PROTOCOL.md split name (nncd_ray.data.protocols.PROTOCOLS) and the AG News test.csv it reads
    protocol: str
    data: str
    compressors: tuple[CompressorChoice, ...]
    # output folder (stores, reports, table, plots)
    out: str
    ks: tuple[int, ...] = (1, 3, 5, 7)
    variant: str = "ncd"
    tile: int = 64
    # matrix engine: "local" (in-process) or "ray"; actors and cluster address for ray
    executor: str = "local"
    actors: int = 1
    address: str | None = None
    # tqdm progress of the matrix engine on stderr
    progress: bool = False
    # write PNG plots (needs matplotlib)
    plots: bool = True
    # "none" (the protocol's k-NN over NCD) or "mp" (over its mutual proximity; not PROTOCOL.md)
    hubness_reduction: str = "none"


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
            "rows": [self._row_dict(row) for row in self.rows],
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
        for row in self.rows:
            speed = "—" if row.pairs_per_second is None else f"{row.pairs_per_second:,.0f}"
            lines.append(
                f"| {row.compressor} | {_fmt(row.bits_per_byte, 2)} | "
                f"{_fmt(row.bits_per_byte_mean_doc, 2)} | "
                + " | ".join(_fmt(row.accuracy.get(k)) for k in ks)
                + " | "
                + " | ".join(_fmt(row.macro_f1.get(k)) for k in ks)
                + f" | {speed} |"
            )
        lines.append("")
        lines.append(
            "pairs/s: the pairs this run computed over its wall time, start-up included; "
            "— where the store was already complete."
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
        for row in self.rows:
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
            for row in self.rows
            if row.report.hub_note is not None
        ]
        return [*lines, "", *notes] if notes else lines


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _row(choice: CompressorChoice, store: str, summary: Any, report: EvaluationReport) -> StudyRow:
    return StudyRow(
        compressor=choice.label,
        spec={"name": choice.spec.name, "options": dict(choice.spec.options)},
        store=store,
        bits_per_byte=report.bits_per_byte,
        bits_per_byte_mean_doc=report.compression.get("bits_per_byte_mean_doc"),
        accuracy={m.k: m.accuracy for m in report.results},
        macro_f1={m.k: m.macro_f1 for m in report.results},
        pairs_per_second=summary.pairs_per_second if summary.pairs_computed else None,
        pairs_computed=int(summary.pairs_computed),
        matrix_seconds=float(summary.wall_seconds),
        evaluation_seconds=report.seconds,
        report=report,
    )


def run_study(config: StudyConfig) -> StudyResult:
    """Compute (or resume) every compressor's matrix, classify, write the table and plots."""
    from nncd_ray.data.protocols import load_protocol
    from nncd_ray.matrix.engine import MatrixConfig, compute_matrix

    ks = check_ks(config.ks)
    split = load_protocol(config.protocol, config.data)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[StudyRow] = []
    for choice in config.compressors:
        store = str(out / f"{choice.label}.zarr")
        started = time.perf_counter()
        summary = compute_matrix(
            MatrixConfig(
                store=store,
                scorer=choice.spec,
                variant=config.variant,
                tile=config.tile,
                executor=config.executor,
                actors=config.actors,
                address=config.address,
                progress=config.progress,
            ),
            split.queries,
            split.refs,
        )
        log.info("%s: matrix in %.1f s", choice.label, time.perf_counter() - started)
        report = evaluate_store(
            EvaluationConfig(store=store, ks=ks, hubness_reduction=config.hubness_reduction)
        )
        report.write_json(out / f"{choice.label}.report.json")
        report.write_predictions(out / f"{choice.label}.predictions.jsonl")
        rows.append(_row(choice, store, summary, report))

    plots: tuple[str, ...] = ()
    skipped: str | None = "not asked for (--no-plots)"
    partial = StudyResult(
        config=config,
        n_queries=len(split.queries),
        n_refs=len(split.refs) if split.refs is not None else len(split.queries),
        square=split.refs is None,
        rows=tuple(rows),
        plots=(),
        plots_skipped=None,
    )
    if config.plots:
        from nncd_ray.study_plots import PlottingUnavailable, write_plots

        try:
            plots, skipped = tuple(write_plots(partial, out)), None
        except PlottingUnavailable as exc:
            skipped = str(exc)
            log.warning("plots skipped: %s", exc)
    result = StudyResult(
        config=config,
        n_queries=partial.n_queries,
        n_refs=partial.n_refs,
        square=partial.square,
        rows=partial.rows,
        plots=plots,
        plots_skipped=skipped,
    )
    (out / "study.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    (out / "study.md").write_text(result.to_markdown(), encoding="utf-8")
    return result
