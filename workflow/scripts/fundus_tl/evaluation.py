"""Out-of-fold and holdout metrics of an experiment, and fold-ensemble predictions for new images.

The holdout is graded by the average of the fold models (mean softmax probabilities for
classification; mean score, then round and clip, for regression), as the seed scripts did.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .cache import CachedImages
from .io import atomic_path, write_json
from .metrics import grades_from_scores, grading_report
from .models import load_model_file
from .training import predict, resolve_device

log = logging.getLogger(__name__)


def ensemble_outputs(
    model_files: list[str | os.PathLike],
    images: CachedImages,
    keys: list[str],
    batch_size: int = 32,
    device: str = "auto",
) -> tuple[np.ndarray, dict]:
    """Average of the fold models' outputs for `keys` (probabilities, or scores), and the metadata.

    Returns (N, classes) probabilities for classification, (N, 1) scores for regression.
    """
    target = resolve_device(device)
    total, meta = None, {}
    for path in model_files:
        model, meta = load_model_file(path, target)
        raw = predict(model, images, keys, batch_size, target)
        if meta["task"] == "classification":
            raw = torch.softmax(torch.from_numpy(raw), dim=1).numpy()
        total = raw if total is None else total + raw
    return total / len(model_files), meta


def _grades(averaged: np.ndarray, task: str, n_classes: int) -> np.ndarray:
    return grades_from_scores(averaged[:, 0], n_classes) if task == "regression" else averaged.argmax(axis=1)


def _with_outputs(rows: pd.DataFrame, averaged: np.ndarray, task: str, n_classes: int) -> pd.DataFrame:
    table = rows.reset_index(drop=True).copy()
    if task == "regression":
        table["score"] = averaged[:, 0]
    else:
        for grade in range(n_classes):
            table[f"p{grade}"] = averaged[:, grade]
    table["predicted"] = _grades(averaged, task, n_classes)
    return table


def evaluate_experiment(
    *,
    experiment_name: str,
    model_files: list[str],
    oof_files: list[str],
    manifest: pd.DataFrame,
    holdout_images: CachedImages | None,
    summary_out: str | Path,
    holdout_out: str | Path,
    batch_size: int = 32,
    device: str = "auto",
) -> dict:
    """Write ``summary.json`` (OOF + holdout metrics) and the per-image holdout predictions."""
    _, meta = load_model_file(model_files[0])
    task, classes = meta["task"], meta["classes"]
    n_classes = len(classes)
    summary: dict = {
        "experiment": experiment_name,
        "model": meta["model"],
        "task": task,
        "classes": classes,
        "folds": len(model_files),
        "image_size": meta["image_size"],
    }

    oof = pd.concat([pd.read_csv(path, sep="\t") for path in oof_files], ignore_index=True)
    if (oof["fold"] >= 0).all():
        summary["oof"] = grading_report(oof["label"].to_numpy(), oof["predicted"].to_numpy(), n_classes)
        summary["oof"]["per_fold_qwk"] = [
            grading_report(part["label"].to_numpy(), part["predicted"].to_numpy(), n_classes)["qwk"]
            for _, part in oof.groupby("fold")
        ]
    else:  # one model selected on the holdout: its predictions are the validation metrics
        summary["validation"] = grading_report(oof["label"].to_numpy(), oof["predicted"].to_numpy(), n_classes)

    holdout = manifest[manifest["split"] == "holdout"]
    if holdout_images is not None:
        holdout = holdout[holdout["key"].isin(holdout_images.index.index)]
    table = pd.DataFrame()
    if len(holdout) and holdout_images is not None:
        averaged, _ = ensemble_outputs(model_files, holdout_images, holdout["key"].tolist(), batch_size, device)
        table = _with_outputs(holdout[["key", "image", "label"]], averaged, task, n_classes)
        summary["holdout"] = grading_report(table["label"].to_numpy(), table["predicted"].to_numpy(), n_classes)
        summary["holdout"]["ensemble"] = "mean of softmax" if task == "classification" else "mean score, round, clip"
    with atomic_path(holdout_out) as tmp:
        table.rename(columns={"label": "actual"}).to_csv(tmp, index=False, float_format="%.6g")
    write_json(summary, summary_out)
    for part in ("oof", "validation", "holdout"):
        if part in summary:
            log.info(
                "%s %s: QWK %.4f, accuracy %.4f (n=%d)",
                experiment_name,
                part,
                summary[part]["qwk"],
                summary[part]["accuracy"],
                summary[part]["n"],
            )
    return summary


def predict_images(
    *,
    model_files: list[str],
    images: CachedImages,
    out_csv: str | Path,
    batch_size: int = 32,
    device: str = "auto",
) -> pd.DataFrame:
    """Fold-ensemble predictions for every decodable cached image: image id, grade, probabilities or score."""
    keys = images.keys()
    rows = pd.DataFrame({"image": [Path(key).stem for key in keys], "key": keys})
    if keys:
        averaged, meta = ensemble_outputs(model_files, images, keys, batch_size, device)
        table = _with_outputs(rows, averaged, meta["task"], len(meta["classes"]))
    else:
        table = rows.assign(predicted=pd.Series(dtype=int))
    table.insert(1, "grade", table.pop("predicted"))
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    log.info("predicted %d images; %d could not be read (listed in the skip report)", len(table), len(images.skipped))
    return table
