"""Out-of-fold and holdout metrics of an experiment, and fold-ensemble predictions for new images.

The holdout is graded by the average of the fold models (mean softmax probabilities for
classification; mean score for regression, then the seed's round + clip), and by each fold
model alone, so the gain of the ensemble is visible. Regression scores (and, on request, the
expected grade of a classifier) also get grade thresholds optimised for QWK on the
out-of-fold predictions; both gradings are reported.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .cache import CachedImages
from .io import atomic_path, write_json
from .metrics import default_thresholds, grades_from_thresholds, grading_report, optimise_thresholds
from .models import load_model_file
from .plots import plot_confusion_matrices, plot_learning_curves, plot_placeholder, plot_roc_curves
from .training import grades_of, predict, resolve_device

log = logging.getLogger(__name__)

PLOTS = ("confusion_oof", "confusion_holdout", "learning_curves", "roc")
SCORE_COLUMNS = ["oof_qwk", "oof_accuracy", "holdout_qwk", "holdout_accuracy"]
ROC_NOT_APPLICABLE = "ROC curves apply to classification:\nthis experiment is a regression (one score per image)"


def ensemble_outputs(
    model_files: list[str | os.PathLike],
    images: CachedImages,
    keys: list[str],
    batch_size: int = 32,
    device: str = "auto",
) -> tuple[np.ndarray, list[np.ndarray], dict]:
    """Mean of the fold models' outputs for `keys`, each model's own outputs, and the metadata.

    Outputs are (N, classes) probabilities for classification, (N, 1) scores for regression,
    also when `keys` is empty, so an empty table still gets every probability or score column.
    """
    target = resolve_device(device)
    each, meta = [], {}
    for path in model_files:
        model, meta = load_model_file(path, target)
        raw = predict(model, images, keys, batch_size, target) if keys else np.zeros((0, meta["outputs"]), np.float32)
        if meta["task"] == "classification":
            raw = torch.softmax(torch.from_numpy(raw), dim=1).numpy()
        each.append(raw)
    return np.mean(each, axis=0), each, meta


def scores_of(outputs: np.ndarray, task: str) -> np.ndarray:
    """A continuous grade: the regression output, or a classifier's expected grade sum(p_k * k)."""
    if task == "regression":
        return outputs[:, 0]
    return outputs @ np.arange(outputs.shape[1])


def _with_outputs(
    rows: pd.DataFrame, outputs: np.ndarray, task: str, n_classes: int, thresholds: list[float] | None
) -> pd.DataFrame:
    table = rows.reset_index(drop=True).copy()
    if task == "regression":
        table["score"] = outputs[:, 0]
    else:
        for grade in range(n_classes):
            table[f"p{grade}"] = outputs[:, grade]
    table["predicted"] = grades_of(outputs, task, n_classes)
    if thresholds is not None:
        table["predicted_thresholds"] = grades_from_thresholds(scores_of(outputs, task), thresholds)
    return table


def _oof_outputs(oof: pd.DataFrame, task: str, n_classes: int) -> np.ndarray:
    columns = ["score"] if task == "regression" else [f"p{grade}" for grade in range(n_classes)]
    return oof[columns].to_numpy(dtype=float)


def _headline(name: str, part: str, report: dict) -> None:
    log.info("%s %s: QWK %.4f, accuracy %.4f (n=%d)", name, part, report["qwk"], report["accuracy"], report["n"])


def evaluate_experiment(
    *,
    experiment_name: str,
    model_files: list[str],
    oof_files: list[str],
    history_files: list[str],
    manifest: pd.DataFrame,
    holdout_images: CachedImages | None,
    summary_out: str | Path,
    holdout_out: str | Path,
    plots: dict[str, str | Path],
    expected_grade: bool = False,
    batch_size: int = 32,
    device: str = "auto",
) -> dict:
    """Write ``summary.json``, the per-image holdout predictions and the plots named in `plots`."""
    model, meta = load_model_file(model_files[0])
    task, classes = meta["task"], meta["classes"]
    n_classes = len(classes)
    histories = {
        f"fold {Path(path).parent.name.removeprefix('fold')}": pd.read_csv(path, sep="\t") for path in history_files
    }
    summary: dict = {
        "experiment": experiment_name,
        "model": meta["model"],
        "task": task,
        "classes": classes,
        "folds": len(model_files),
        "image_size": meta["image_size"],
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "training_seconds": round(float(sum(history["seconds"].sum() for history in histories.values())), 1),
    }

    oof = pd.concat([pd.read_csv(path, sep="\t") for path in oof_files], ignore_index=True)
    oof_outputs = _oof_outputs(oof, task, n_classes)
    actual = oof["label"].to_numpy()
    cross_validated = bool((oof["fold"] >= 0).all())
    part = "oof" if cross_validated else "validation"
    summary[part] = grading_report(actual, grades_of(oof_outputs, task, n_classes), n_classes)
    for fold, rows in oof.groupby("fold").indices.items():
        if len(rows) > 1 and len(np.unique(oof_outputs[rows], axis=0)) == 1:
            log.warning(
                "fold %d gives every one of its %d validation images the same output: the model learned "
                "nothing that tells images apart (too few epochs, an lr far off, or a frozen backbone?)",
                fold,
                len(rows),
            )
    if cross_validated:
        summary[part]["per_fold_qwk"] = [
            grading_report(group["label"].to_numpy(), group["predicted"].to_numpy(), n_classes)["qwk"]
            for _, group in oof.groupby("fold")
        ]
    thresholds = None
    if task == "regression" or expected_grade:
        # With a single split the only labelled predictions are the holdout's: keep the plain cut points.
        scores = scores_of(oof_outputs, task)
        thresholds = (
            optimise_thresholds(scores, actual, n_classes) if cross_validated else default_thresholds(n_classes)
        )
        summary["thresholds"] = {
            "values": thresholds,
            "fitted_on": "out-of-fold predictions" if cross_validated else "none (single split: 0.5, 1.5, ...)",
            "score": "regression output" if task == "regression" else "expected grade sum(p_k * k)",
        }
        summary[part]["with_thresholds"] = grading_report(actual, grades_from_thresholds(scores, thresholds), n_classes)
    _headline(experiment_name, part, summary[part])

    holdout = manifest[manifest["split"] == "holdout"]
    if holdout_images is not None:
        holdout = holdout[holdout["key"].isin(holdout_images.index.index)]
    table = pd.DataFrame(columns=["key", "image", "label", "predicted"])
    if len(holdout) and holdout_images is not None:
        averaged, each, _ = ensemble_outputs(model_files, holdout_images, holdout["key"].tolist(), batch_size, device)
        table = _with_outputs(holdout[["key", "image", "label"]], averaged, task, n_classes, thresholds)
        truth = table["label"].to_numpy()
        report = grading_report(truth, table["predicted"].to_numpy(), n_classes)
        report["ensemble"] = "mean of softmax" if task == "classification" else "mean score, round, clip"
        if thresholds is not None:
            report["with_thresholds"] = grading_report(truth, table["predicted_thresholds"].to_numpy(), n_classes)
        report["per_fold"] = [
            {
                "model": Path(path).parent.name,
                **{
                    key: value
                    for key, value in grading_report(truth, grades_of(outputs, task, n_classes), n_classes).items()
                    if key in ("qwk", "accuracy")
                },
            }
            for path, outputs in zip(model_files, each, strict=True)
        ]
        summary["holdout"] = report
        _headline(experiment_name, "holdout (fold ensemble)", report)
    with atomic_path(holdout_out) as tmp:
        table.rename(columns={"label": "actual"}).to_csv(tmp, index=False, float_format="%.6g")

    plot_confusion_matrices(
        summary[part]["confusion_matrix"],
        classes,
        f"{experiment_name}: {'out-of-fold' if cross_validated else 'validation'}",
        plots["confusion_oof"],
    )
    if "holdout" in summary:
        plot_confusion_matrices(
            summary["holdout"]["confusion_matrix"],
            classes,
            f"{experiment_name}: holdout, fold ensemble",
            plots["confusion_holdout"],
        )
    else:
        plot_confusion_matrices([], classes, f"{experiment_name}: no holdout", plots["confusion_holdout"])
    plot_learning_curves(histories, plots["learning_curves"], monitor=meta.get("monitor", "val_loss"))
    if task == "classification" and "holdout" in summary:
        probabilities = table[[f"p{grade}" for grade in range(n_classes)]].to_numpy(dtype=float)
        plot_roc_curves(
            table["label"].to_numpy(), probabilities, classes, f"{experiment_name}: holdout, one-vs-rest", plots["roc"]
        )
    elif task == "classification":
        plot_roc_curves(actual, oof_outputs, classes, f"{experiment_name}: {part}, one-vs-rest", plots["roc"])
    else:
        plot_placeholder(f"{experiment_name}: ROC curves", ROC_NOT_APPLICABLE, plots["roc"])
    write_json(summary, summary_out)
    return summary


def predict_images(
    *,
    model_files: list[str],
    images: CachedImages,
    summary_file: str | Path,
    out_csv: str | Path,
    test_dir: str | Path,
    batch_size: int = 32,
    device: str = "auto",
) -> pd.DataFrame:
    """Fold-ensemble grades for every decodable cached image of `test_dir`: image id, grade, probabilities or score.

    When the experiment has fitted thresholds (regression, or expected grade), ``grade`` uses them
    and ``grade_rounded`` keeps the seed's argmax / round + clip. Without any usable image the
    table keeps all its columns, so code reading it needs no special case.
    """
    thresholds = json.loads(Path(summary_file).read_text()).get("thresholds", {}).get("values")
    keys = images.keys()
    rows = pd.DataFrame({"image": [Path(key).stem for key in keys], "key": keys})
    averaged, _, meta = ensemble_outputs(model_files, images, keys, batch_size, device)
    table = _with_outputs(rows, averaged, meta["task"], len(meta["classes"]), thresholds)
    if "predicted_thresholds" in table:
        table.insert(1, "grade", table.pop("predicted_thresholds"))
        table.insert(2, "grade_rounded", table.pop("predicted"))
    else:
        table.insert(1, "grade", table.pop("predicted"))
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    if table.empty:
        log.warning(
            "no usable images in %s: %s has only its header; %d could not be read (listed in the skip report)",
            test_dir,
            out_csv,
            len(images.skipped),
        )
    else:
        log.info(
            "predicted %d images; %d could not be read (listed in the skip report)", len(table), len(images.skipped)
        )
    return table


def leaderboard(summary_files: list[str | Path], out_tsv: str | Path) -> pd.DataFrame:
    """One row per experiment: OOF and holdout QWK/accuracy, training time, parameter count.

    A single-split experiment (``folds: 1``) has no out-of-fold predictions: its oof columns stay
    empty. Its "validation" scores are not shown, as they grade the same holdout images, with the
    model selected on them.
    """
    rows = []
    for path in summary_files:
        summary = json.loads(Path(path).read_text())
        oof = summary.get("oof", {})
        holdout = summary.get("holdout", {})
        rows.append(
            {
                "experiment": summary["experiment"],
                "model": summary["model"],
                "task": summary["task"],
                "folds": summary["folds"],
                "image_size": summary["image_size"],
                "oof_qwk": oof.get("qwk"),
                "oof_accuracy": oof.get("accuracy"),
                "holdout_qwk": holdout.get("qwk"),
                "holdout_accuracy": holdout.get("accuracy"),
                "training_minutes": round(summary["training_seconds"] / 60, 2),
                "parameters": summary["parameters"],
            }
        )
    table = pd.DataFrame(rows).astype({column: float for column in SCORE_COLUMNS})
    table[SCORE_COLUMNS] = table[SCORE_COLUMNS].round(4)
    table = table.sort_values("holdout_qwk", ascending=False, na_position="last")
    with atomic_path(out_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table
