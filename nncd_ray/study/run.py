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
import time
from pathlib import Path
from typing import Any

from nncd_ray.data.protocols import ProtocolSplit, load_protocol
from nncd_ray.knn.evaluate import EvaluationConfig, evaluate_store
from nncd_ray.knn.neighbours import check_ks
from nncd_ray.knn.report import EvaluationReport
from nncd_ray.matrix.config import MatrixConfig
from nncd_ray.matrix.engine import compute_matrix
from nncd_ray.study.config import CompressorChoice, StudyConfig
from nncd_ray.study.result import StudyResult, StudyRow

log = logging.getLogger(__name__)


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


def _baseline(
    config: StudyConfig, split: ProtocolSplit, ks: tuple[int, ...], out: Path
) -> tuple[StudyRow | None, str | None]:
    """The embedding baseline row, or ``None`` and why it is left out."""
    if not config.embedding_baseline:
        return None, None
    if split.refs is None:
        return None, "the embedding baseline is for queries × references splits"
    from nncd_ray.study.embedding_baseline import (
        DESCRIPTION,
        LABEL,
        EmbeddingUnavailable,
        embedding_report,
    )

    try:
        report = embedding_report(split.queries, split.refs, ks, out)
    except EmbeddingUnavailable as exc:
        log.warning("embedding baseline skipped: %s", exc)
        return None, f"embedding baseline skipped: {exc}"
    report.write_json(out / f"{LABEL}.report.json")
    report.write_predictions(out / f"{LABEL}.predictions.jsonl")
    row = StudyRow(
        compressor=LABEL,
        spec={"name": LABEL, "description": DESCRIPTION},
        store=report.store,
        bits_per_byte=None,
        bits_per_byte_mean_doc=None,
        accuracy={m.k: m.accuracy for m in report.results},
        macro_f1={m.k: m.macro_f1 for m in report.results},
        pairs_per_second=None,
        pairs_computed=0,
        matrix_seconds=0.0,
        evaluation_seconds=report.seconds,
        report=report,
        baseline=True,
    )
    return row, None


def run_study(config: StudyConfig) -> StudyResult:
    """Compute (or resume) every compressor's matrix, classify, write the table and plots."""
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
                candidates=config.candidates,
                prefilter=config.prefilter,
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

    baseline, baseline_note = _baseline(config, split, ks, out)
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
        baseline=baseline,
        baseline_note=baseline_note,
    )
    if config.plots:
        from nncd_ray.study.plots import PlottingUnavailable, write_plots

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
        baseline=baseline,
        baseline_note=baseline_note,
    )
    (out / "study.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    (out / "study.md").write_text(result.to_markdown(), encoding="utf-8")
    return result
