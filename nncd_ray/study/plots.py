"""PNG plots of a compression-vs-accuracy study (matplotlib, an optional extra: ``[plot]``).

- ``accuracy_vs_bits_per_byte.png``: one point per compressor and k, labelled with the compressor;
- ``confusion_<compressor>_k<k>.png``: the confusion matrix of the most accurate compressor and k;
- ``ncd_block_<compressor>.png``: the first rows × columns (up to 40 × 40) of that compressor's NCD
  matrix, rows and columns grouped by label so that class structure shows as blocks.

Uses ``matplotlib.figure.Figure`` directly (no pyplot, no global state, no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nncd_ray.errors import ConfigError
from nncd_ray.knn.evaluate import NCDRows
from nncd_ray.matrix.store.matrix_store import MatrixStore
from nncd_ray.matrix.store.reader import StoreReader

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from nncd_ray.study.result import StudyResult

INSTALL_HINT = "matplotlib is not installed; pip install 'nncd_ray[plot]' (or matplotlib) for plots"
# edge of the NCD block shown in the heatmap
BLOCK = 40
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


class PlottingUnavailable(ConfigError):
    """matplotlib cannot be imported."""


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlottingUnavailable(INSTALL_HINT) from exc
    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def plot_accuracy_vs_bits(result: StudyResult, path: Path) -> Path:
    figure = _figure(6.4, 4.6)
    axes = figure.add_subplot()
    for index, k in enumerate(result.config.ks):
        points = [
            (row.bits_per_byte, row.accuracy[k])
            for row in result.rows
            if row.bits_per_byte is not None and k in row.accuracy
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.scatter(xs, ys, marker=MARKERS[index % len(MARKERS)], label=f"k={k}", alpha=0.8)
    first_k = result.config.ks[0]
    for row in result.rows:
        if row.bits_per_byte is not None and first_k in row.accuracy:
            axes.annotate(
                row.compressor,
                (row.bits_per_byte, row.accuracy[first_k]),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=9,
            )
    axes.set_xlabel("bits per byte (total bits / total bytes, single documents)")
    axes.set_ylabel("k-NN accuracy")
    axes.set_title(f"{result.config.protocol}: accuracy vs compression ({result.config.variant})")
    axes.grid(alpha=0.3)
    axes.legend(title="neighbours")
    figure.savefig(path)
    return path


def plot_confusion(confusion: Any, labels: tuple[Any, ...], title: str, path: Path) -> Path:
    counts = np.asarray(confusion, dtype=np.int64)
    figure = _figure(1.2 + 0.9 * len(labels), 1.0 + 0.8 * len(labels))
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    ticks = np.arange(len(labels))
    axes.set_xticks(ticks, [str(x) for x in labels])
    axes.set_yticks(ticks, [str(x) for x in labels])
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    threshold = counts.max() / 2 if counts.size else 0
    for (i, j), value in np.ndenumerate(counts):
        axes.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            color="white" if value > threshold else "black",
            fontsize=9,
        )
    axes.set_title(title)
    figure.savefig(path)
    return path


def plot_ncd_block(store: str, title: str, path: Path, variant: str) -> Path:
    """Heatmap of NCD over the first ``BLOCK`` rows and columns, grouped by label (read through
    the checked store reader, like the k-NN stage)."""
    reader = StoreReader(MatrixStore.open(store))
    n_rows, n_cols = min(BLOCK, reader.n_rows), min(BLOCK, reader.n_cols)
    distances = NCDRows(reader, variant).distances(0, n_rows)[:, :n_cols]
    row_labels = _labels(reader, "row_labels", n_rows)
    col_labels = _labels(reader, "col_labels", n_cols)
    row_order = np.argsort(np.asarray(row_labels, dtype=str), kind="stable")
    col_order = np.argsort(np.asarray(col_labels, dtype=str), kind="stable")
    shown = distances[np.ix_(row_order, col_order)]
    figure = _figure(6.4, 5.4)
    axes = figure.add_subplot()
    image = axes.imshow(shown, cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8, label="NCD")
    for labels, order, line, set_ticks in (
        (row_labels, row_order, axes.axhline, axes.set_yticks),
        (col_labels, col_order, axes.axvline, axes.set_xticks),
    ):
        ordered = [str(labels[i]) for i in order]
        starts = [0] + [p for p in range(1, len(ordered)) if ordered[p] != ordered[p - 1]]
        for start in starts[1:]:
            line(start - 0.5, color="white", linewidth=0.8)
        # one tick per label group, at its middle, named by the label
        ends = [*starts[1:], len(ordered)]
        set_ticks(
            [(a + b - 1) / 2 for a, b in zip(starts, ends, strict=True)],
            [ordered[a] for a in starts],
        )
    axes.set_xlabel(f"first {n_cols} references (columns), grouped by label")
    axes.set_ylabel(f"first {n_rows} queries (rows), grouped by label")
    axes.set_title(title)
    figure.savefig(path)
    return path


def _labels(reader: StoreReader, name: str, n: int) -> list[Any]:
    """The first ``n`` labels of ``name`` (``""`` each when the store has none)."""
    return reader.document_values(name)[:n] if reader.has(name) else [""] * n


def write_plots(result: StudyResult, out: Path) -> list[str]:
    """All three plots into ``out``; raises :class:`PlottingUnavailable` without matplotlib."""
    _figure(1, 1)  # fail early, before any file is written
    written = [str(plot_accuracy_vs_bits(result, out / "accuracy_vs_bits_per_byte.png"))]
    if not result.rows:
        return written
    best, k = result.best()
    if best.report.results:
        metrics = best.report.result(k)
        written.append(
            str(
                plot_confusion(
                    metrics.confusion,
                    metrics.labels,
                    f"{best.compressor}, k={k}: accuracy {metrics.accuracy:.3f}",
                    out / f"confusion_{best.compressor}_k{k}.png",
                )
            )
        )
    written.append(
        str(
            plot_ncd_block(
                best.store,
                f"{best.compressor}: {best.report.variant} of {result.config.protocol}",
                out / f"ncd_block_{best.compressor}.png",
                best.report.variant,
            )
        )
    )
    return written
