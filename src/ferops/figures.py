"""Figures shared by the stages: image galleries and grouped bar charts, written reproducibly.

Figures are plain :class:`matplotlib.figure.Figure` objects, never pyplot's: saving one to PNG
renders it with Agg whatever backend is configured, so importing this module changes no global
matplotlib state and needs no display. PNG metadata is stripped, so the same data always
produces the same bytes (stage outputs stay byte-identical on rerun).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ferops.io import atomic_file

logger = logging.getLogger(__name__)

_DPI = 100


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float],
              squeeze: bool = True) -> tuple[Figure, Any]:
    """A new figure and its axes, as ``pyplot.subplots`` makes them, without pyplot.

    pyplot would keep every figure alive in its global registry until closed, and needs a
    backend chosen before it is imported.
    """
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(nrows, ncols, squeeze=squeeze)


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> None:
    """Save a figure as PNG atomically, without metadata that changes between runs."""
    with atomic_file(path) as temp:
        figure.savefig(temp, format="png", dpi=_DPI, metadata={"Software": None})
    logger.info("wrote figure %s", path)


def image_grid(
    images: np.ndarray | Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    columns: int = 8,
    cell_inches: float = 1.3,
) -> None:
    """Save a gallery of grayscale images with a caption above each.

    The images are tiled into one mosaic drawn with a single ``imshow`` (one subplot per image
    takes seconds for a few hundred images).

    Args:
        images: Images of shape (height, width), uint8, all the same size.
        titles: One caption per image (short: they are drawn in a small font).
        path: Destination PNG.
        title: Figure title.
        columns: Images per row.
        cell_inches: Size of one cell.
    """
    count = len(images)
    columns = max(1, min(columns, count)) if count else 1
    rows = max(1, math.ceil(count / columns))
    height, width = (np.asarray(images[0]).shape[:2] if count else (48, 48))
    gap = max(2, height // 3)  # room for the caption above each image
    mosaic = np.full((rows * (height + gap), columns * (width + 2)), 255, dtype=np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * (height + gap) + gap, column * (width + 2) + 1
        mosaic[top:top + height, left:left + width] = images[index]
    figure, axis = _subplots(
        figsize=(columns * cell_inches, rows * cell_inches * (height + gap) / height + 0.4)
    )
    axis.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axis.set_axis_off()
    for index in range(count):
        row, column = divmod(index, columns)
        axis.text(column * (width + 2) + 1 + width / 2, row * (height + gap) + gap - 1,
                  titles[index], ha="center", va="bottom", fontsize=6)
    if not count:
        axis.text(mosaic.shape[1] / 2, mosaic.shape[0] / 2, "(none)", ha="center", va="center")
    if title:
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    ylabel: str = "images",
    annotate: bool = True,
) -> None:
    """Save a grouped bar chart: one group per label, one bar per series.

    Args:
        groups: Labels along the x axis (e.g. class names).
        series: Series name to one value per group (e.g. "before" / "after").
        path: Destination PNG.
        title: Figure title.
        ylabel: Y axis label.
        annotate: Write each bar's value above it.
    """
    figure, axis = _subplots(figsize=(max(6.0, 0.9 * len(groups) * max(1, len(series))), 3.6))
    width = 0.8 / max(1, len(series))
    positions = np.arange(len(groups))
    for offset, (name, values) in enumerate(series.items()):
        bars = axis.bar(positions + (offset - (len(series) - 1) / 2) * width, values, width, label=name)
        if annotate:
            axis.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=6, padding=1)
    axis.set_xticks(positions, groups)
    axis.set_ylabel(ylabel)
    if title:
        axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    axis.margins(y=0.12)
    figure.tight_layout()
    save_figure(figure, path)


def panel_bars(
    groups: Sequence[str],
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    ylabel: str = "images",
) -> None:
    """Save several grouped bar charts side by side (e.g. one panel per data split).

    Args:
        groups: Labels along each x axis (e.g. class names).
        panels: Panel title to {series name: one value per group}.
        path: Destination PNG.
        title: Figure title.
        ylabel: Y axis label of the first panel.
    """
    count = max(1, len(panels))
    figure, axes = _subplots(1, count, figsize=(5.2 * count, 3.8), squeeze=False)
    for axis, (panel_title, series) in zip(axes.flat, panels.items(), strict=False):
        width = 0.8 / max(1, len(series))
        positions = np.arange(len(groups))
        for offset, (name, values) in enumerate(series.items()):
            bars = axis.bar(
                positions + (offset - (len(series) - 1) / 2) * width, values, width, label=name
            )
            axis.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=5, padding=1,
                           rotation=90)
        axis.set_xticks(positions, groups, rotation=45, ha="right", fontsize=8)
        axis.set_title(panel_title, fontsize=9)
        axis.margins(y=0.18)
        axis.legend(fontsize=7)
    axes.flat[0].set_ylabel(ylabel)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def training_curves(history: Mapping[str, Sequence[float]], path: str | os.PathLike[str], *,
                    title: str = "", best_epoch: int | None = None) -> Figure:
    """Save loss, accuracy and learning-rate curves per epoch; return the figure.

    Args:
        history: ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy`` and ``lr`` per epoch.
        path: Destination PNG.
        title: Figure title.
        best_epoch: 1-based epoch to mark (the kept checkpoint).
    """
    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, axes = _subplots(1, 3, figsize=(13, 3.6))
    for axis, metric in zip(axes[:2], ("loss", "accuracy"), strict=True):
        axis.plot(epochs, history[metric], label="train")
        axis.plot(epochs, history[f"val_{metric}"], label="validation (PublicTest)")
        axis.set_xlabel("epoch")
        axis.set_title(metric, fontsize=10)
        if best_epoch:
            axis.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        axis.legend(fontsize=7)
    axes[2].plot(epochs, history["lr"])
    axes[2].set_yscale("log")
    axes[2].set_xlabel("epoch")
    axes[2].set_title("learning rate (end of epoch)", fontsize=10)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
    return figure


def confusion_matrix_figure(matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike[str], *,
                            title: str = "", rows: Sequence[int] | None = None) -> None:
    """Save a row-normalised confusion matrix (each true class sums to 1) with counts.

    Args:
        matrix: Counts, rows = true class, columns = predicted class.
        classes: Class names.
        path: Destination PNG.
        title: Figure title.
        rows: True classes to show (default: those with at least one example).
    """
    matrix = np.asarray(matrix, dtype=float)
    rows = [i for i in range(len(classes)) if matrix[i].sum() > 0] if rows is None else list(rows)
    totals = matrix[rows].sum(axis=1, keepdims=True)
    normalised = np.divide(matrix[rows], totals, out=np.zeros_like(matrix[rows]), where=totals > 0)
    figure, axis = _subplots(figsize=(1.0 + 0.75 * len(classes), 0.9 + 0.6 * len(rows)))
    axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for r, row in enumerate(rows):
        for column in range(len(classes)):
            value = normalised[r, column]
            axis.text(column, r, f"{value:.2f}\n({int(matrix[row, column])})", ha="center", va="center",
                      fontsize=6, color="white" if value > 0.5 else "black")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(rows)), [f"{classes[i]} ({int(totals[r, 0])})" for r, i in enumerate(rows)],
                    fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true (images)")
    if title:
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)


def reliability_figure(panels: Mapping[str, Mapping], path: str | os.PathLike[str], *,
                       title: str = "") -> None:
    """Save reliability diagrams, one panel per dataset: accuracy vs confidence per bin, with ECE.

    Args:
        panels: Panel title to the output of :func:`ferops.metrics.calibration`.
        path: Destination PNG.
        title: Figure title.
    """
    count = max(1, len(panels))
    figure, axes = _subplots(1, count, figsize=(3.2 * count, 3.4), squeeze=False)
    for axis, (name, data) in zip(axes.flat, panels.items(), strict=False):
        bins = [b for b in data["bins"] if b["count"]]
        lower = np.array([b["lower"] for b in bins])
        width = np.array([b["upper"] - b["lower"] for b in bins])
        axis.bar(lower, [b["accuracy"] for b in bins], width=width, align="edge", edgecolor="black",
                 linewidth=0.5, label="accuracy")
        axis.bar(lower, [b["confidence"] - b["accuracy"] for b in bins], bottom=[b["accuracy"] for b in bins],
                 width=width, align="edge", color="red", alpha=0.3, label="gap to confidence")
        axis.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence")
        axis.set_title(f"{name}\nECE {data['ece']:.3f}", fontsize=9)
        axis.legend(fontsize=6, loc="upper left")
    axes.flat[0].set_ylabel("accuracy")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def heatmap_grid(images: np.ndarray, heatmaps: np.ndarray, titles: Sequence[str],
                 path: str | os.PathLike[str], *, columns: int = 8, title: str = "") -> None:
    """Save grayscale images with a heatmap (e.g. Grad-CAM, values 0..1) laid over each.

    Args:
        images: (n, h, w) uint8 images.
        heatmaps: (n, h, w) values in 0..1.
        titles: One caption per image.
        path: Destination PNG.
        columns: Images per row.
        title: Figure title.
    """
    count = len(images)
    columns = max(1, min(columns, count)) if count else 1
    rows = max(1, math.ceil(count / columns))
    figure, axes = _subplots(rows, columns, figsize=(1.4 * columns, 1.55 * rows + 0.4), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.set_axis_off()
        if index < count:
            axis.imshow(images[index], cmap="gray", vmin=0, vmax=255)
            axis.imshow(heatmaps[index], cmap="jet", alpha=0.4, vmin=0, vmax=1)
            axis.set_title(titles[index], fontsize=6)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)
