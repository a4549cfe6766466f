"""Report figures: confusion matrices, learning curves, class balance per fold, ROC curves.

Each function draws one PNG sized for a README (about 900 px wide) and writes it atomically,
so a killed job never leaves a half-written picture under the final name. Empty inputs give a
figure that says so rather than an exception, because a report should still build.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede the pyplot import

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.metrics import auc, roc_curve

from .io import atomic_path

DPI = 110
WIDTH_INCHES = 8.2  # 8.2 in x 110 dpi = 902 px
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "figure.titlesize": 13,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _palette(count: int) -> list:
    """Distinct colour-blind-aware colours (tab10, tab20 beyond ten), so a grade keeps its colour in every figure."""
    palette = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(index % palette.N) for index in range(count)]


def _save(fig: Figure, out_png: str | os.PathLike) -> None:
    """Write `fig` beside its final name, rename it into place, and always release the figure."""
    try:
        with atomic_path(out_png, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)


def plot_placeholder(title: str, message: str, out_png: str | os.PathLike) -> None:
    """A figure saying why there is no plot (no data, or a plot that does not apply), so a report still builds."""
    fig = plt.figure(figsize=(WIDTH_INCHES, 2.5))
    fig.suptitle(title)
    fig.text(0.5, 0.45, message, ha="center", va="center", fontsize=14, color="0.35")
    _save(fig, out_png)


def _annotate_cells(ax, values: np.ndarray, labels: list[list[str]], cmap, norm: Normalize, fontsize: float) -> None:
    """Write each cell's label in black or white, whichever reads better on its colour."""
    for row in range(values.shape[0]):
        for column in range(values.shape[1]):
            value = values[row, column]
            red, green, blue, _ = cmap(norm(value)) if np.isfinite(value) else (1, 1, 1, 1)
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(
                column,
                row,
                labels[row][column],
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if dark else "black",
            )


def _finite_line(ax, epochs, values, colour, **style) -> None:
    """Plot the finite points only (NaN QWK, missing learning rate); a lone point gets a dot."""
    epochs, values = np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(epochs) & np.isfinite(values)
    if keep.any():
        marker = "o" if keep.sum() == 1 else None
        ax.plot(epochs[keep], values[keep], color=colour, marker=marker, **style)


@matplotlib.rc_context(STYLE)
def plot_confusion_matrices(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str, out_png: str | os.PathLike
) -> None:
    """Counts beside row-normalised recall: counts show where images went, rates compare rare grades fairly.

    Rows are the actual grade, columns the predicted one (as in ``summary.json``).
    """
    counts = np.asarray(matrix, dtype=float)
    if counts.size == 0 or counts.sum() == 0:
        plot_placeholder(title, "no data: the confusion matrix is empty", out_png)
        return
    n_classes = len(class_names)
    if counts.shape != (n_classes, n_classes):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {n_classes} class names")
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(totals > 0, counts / totals, np.nan)

    cmap = matplotlib.colormaps["viridis"]
    fontsize = max(6.0, 11.0 - 0.5 * n_classes)
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDTH_INCHES, 4.6), layout="constrained")
    fig.suptitle(title)
    panels = (
        (left, counts, Normalize(0, counts.max()), f"counts (n = {int(counts.sum())})", "{:.0f}"),
        (right, rates, Normalize(0, 1), "recall per actual grade (row %)", "{:.0%}"),
    )
    for ax, values, norm, panel_title, pattern in panels:
        ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm)
        labels = [[pattern.format(value) if np.isfinite(value) else "–" for value in row] for row in values]
        _annotate_cells(ax, values, labels, cmap, norm, fontsize)
        ax.set_title(panel_title)
        ax.set_xlabel("predicted")
        ax.set_xticks(range(n_classes), class_names, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(n_classes), class_names)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    left.set_ylabel("actual")
    right.set_yticks(range(n_classes), [f"n = {int(total)}" for total in totals[:, 0]])
    _save(fig, out_png)


@matplotlib.rc_context(STYLE)
def plot_learning_curves(
    histories: Mapping[str, pd.DataFrame], out_png: str | os.PathLike, *, monitor: str = "val_loss"
) -> None:
    """Loss, validation QWK and learning rate per epoch and fold, to spot over-fitting and plateaus.

    `histories` maps a fold label ("fold 0", ...) to its ``history.tsv`` table. A dot marks the
    epoch each fold kept: lowest ``val_loss``, or highest ``val_qwk`` when that was the `monitor`.
    """
    if monitor not in ("val_loss", "val_qwk"):
        raise ValueError(f"monitor '{monitor}' is not val_loss or val_qwk")
    title = "Learning curves"
    histories = {name: table for name, table in histories.items() if len(table)}
    if not histories:
        plot_placeholder(title, "no data: no epoch was recorded", out_png)
        return
    fig, (loss_ax, qwk_ax, lr_ax) = plt.subplots(1, 3, figsize=(WIDTH_INCHES, 3.6), layout="constrained")
    fig.suptitle(title)
    colours = dict(zip(histories, _palette(len(histories)), strict=True))
    for name, table in histories.items():
        table = table.sort_values("epoch")
        colour = colours[name]
        _finite_line(loss_ax, table["epoch"], table["train_loss"], colour, linestyle="--", alpha=0.8)
        _finite_line(loss_ax, table["epoch"], table["val_loss"], colour)
        _finite_line(qwk_ax, table["epoch"], table["val_qwk"], colour)
        _finite_line(lr_ax, table["epoch"], table["lr"].where(table["lr"] > 0), colour)
        if table[monitor].notna().any():
            kept = table.loc[table[monitor].idxmax() if monitor == "val_qwk" else table[monitor].idxmin()]
            _finite_line(loss_ax, [kept["epoch"]], [kept["val_loss"]], colour, markersize=7)
            _finite_line(qwk_ax, [kept["epoch"]], [kept["val_qwk"]], colour, markersize=7)

    for ax, panel_title in ((loss_ax, "loss"), (qwk_ax, "validation QWK"), (lr_ax, "learning rate")):
        ax.set(title=panel_title, xlabel="epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.xaxis.get_major_locator().set_params(integer=True)
        else:
            ax.set(xticks=[], yticks=[])
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="0.35")
    if lr_ax.lines:
        lr_ax.set_yscale("log")
    handles = [Line2D([], [], color=colour, label=name) for name, colour in colours.items()]
    handles += [
        Line2D([], [], color="0.3", linestyle="--", label="train"),
        Line2D([], [], color="0.3", label="validation"),
        Line2D([], [], color="0.3", marker="o", linestyle="", label="kept epoch"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8), frameon=False)
    _save(fig, out_png)


@matplotlib.rc_context(STYLE)
def plot_class_balance(folds_table: pd.DataFrame, class_names: Sequence[str], out_png: str | os.PathLike) -> None:
    """Images per grade on each fold's validation side and the holdout, to show stratification worked.

    `folds_table` is ``folds.tsv``: training rows with fold >= 0 are grouped by fold, holdout rows
    (fold -1) form "holdout", and training rows without a fold (``folds: 1``) form "train".
    """
    if folds_table.empty:
        plot_placeholder("Images per grade", "no data: the fold table is empty", out_png)
        return
    n_classes = len(class_names)
    unknown = sorted(set(folds_table["label"]) - set(range(n_classes)))
    if unknown:
        raise ValueError(f"labels {unknown} are outside the {n_classes} class names")
    holdout = folds_table["split"].eq("holdout") if "split" in folds_table else folds_table["fold"].eq(-1)
    groups = np.where(holdout, "holdout", np.where(folds_table["fold"] >= 0, "fold", "train"))
    order = [f"fold {fold}" for fold in sorted(folds_table.loc[groups == "fold", "fold"].unique())]
    order += [name for name in ("train", "holdout") if (groups == name).any()]
    shown = ["each fold's validation side" if (groups == "fold").any() else "training images"]
    shown += ["the holdout"] if holdout.any() else []
    names = np.where(groups == "fold", "fold " + folds_table["fold"].astype(str), groups)
    counts = pd.crosstab(names, folds_table["label"]).reindex(index=order, columns=range(n_classes), fill_value=0)
    shares = counts.div(counts.sum(axis=1), axis=0)

    fig, (count_ax, share_ax) = plt.subplots(1, 2, figsize=(WIDTH_INCHES, 3.9), layout="constrained")
    fig.suptitle("Images per grade: " + " and ".join(shown))
    positions = np.arange(len(order))
    for values, ax in ((counts, count_ax), (shares * 100, share_ax)):
        bottom = np.zeros(len(order))
        for grade, colour in enumerate(_palette(n_classes)):
            column = values[grade].to_numpy(dtype=float)
            ax.bar(positions, column, bottom=bottom, color=colour, width=0.7, label=class_names[grade])
            bottom += column
        ax.set_xticks(
            positions, order, rotation=30 if len(order) > 6 else 0, ha="right" if len(order) > 6 else "center"
        )
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    for position, total in zip(positions, counts.sum(axis=1), strict=True):
        count_ax.annotate(f"{total}", (position, total), xytext=(0, 2), textcoords="offset points", ha="center")
    count_ax.margins(y=0.08)
    count_ax.set(title="images", ylabel="images")
    share_ax.set(title="share of each group", ylabel="% of images", ylim=(0, 100))
    fig.legend(*count_ax.get_legend_handles_labels(), loc="outside lower center", ncol=min(n_classes, 6), frameon=False)
    _save(fig, out_png)


@matplotlib.rc_context(STYLE)
def plot_roc_curves(
    actual: Sequence[int],
    probabilities: np.ndarray,
    class_names: Sequence[str],
    title: str,
    out_png: str | os.PathLike,
) -> None:
    """One-vs-rest ROC per grade: how well each grade's probability ranks its images, threshold-free.

    A grade with no positive or no negative image in `actual` has no ROC; it is listed as skipped.
    """
    actual = np.asarray(actual)
    probabilities = np.asarray(probabilities, dtype=float)
    if len(actual) == 0:
        plot_placeholder(title, "no data: no predictions", out_png)
        return
    n_classes = len(class_names)
    if probabilities.shape != (len(actual), n_classes):
        raise ValueError(
            f"probabilities of shape {probabilities.shape} do not match {len(actual)} images x {n_classes} classes"
        )
    fig, ax = plt.subplots(figsize=(WIDTH_INCHES, 5.0), layout="constrained")
    fig.suptitle(title)
    ax.plot([0, 1], [0, 1], ":", color="0.5", label="chance (AUC 0.5)")
    areas = []
    for grade, (name, colour) in enumerate(zip(class_names, _palette(n_classes), strict=True)):
        positives = int((actual == grade).sum())
        if positives in (0, len(actual)):
            reason = "no images of it" if positives == 0 else "no other grades"
            ax.plot([], [], " ", label=f"{name}: skipped, {reason}")
            continue
        false_positive_rate, true_positive_rate, _ = roc_curve(actual == grade, probabilities[:, grade])
        area = auc(false_positive_rate, true_positive_rate)
        areas.append(area)
        ax.plot(
            false_positive_rate,
            true_positive_rate,
            color=colour,
            linewidth=2,
            label=f"{name}: AUC {area:.3f} (n = {positives})",
        )
    ax.set(
        xlabel="false positive rate (1 − specificity)",
        ylabel="true positive rate (sensitivity)",
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        aspect="equal",
        title=f"one-vs-rest, macro AUC {np.mean(areas):.3f}" if areas else "one-vs-rest",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    _save(fig, out_png)
