"""Assign training images to cross-validation folds, never splitting a patient.

EyePACS labels of a patient's two eyes agree with QWK 0.855; putting one eye in training and
the other in validation leaks, so folds (and a carved holdout) are grouped by patient.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

log = logging.getLogger(__name__)

HOLDOUT = -1
FOLD_COLUMNS = ["key", "split", "image", "label", "patient", "fold"]


class NotEnoughImages(ValueError):
    """A class has too few images for the requested number of folds."""


def _grouped_split(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold number of every row, stratified by label and grouped by patient."""
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = np.full(len(labels), HOLDOUT, dtype=int)
    for number, (_, validation) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[validation] = number
    return folds


def check_class_counts(train: pd.DataFrame, class_names: list[str], n_folds: int) -> None:
    """Stop with a clear message when a class cannot appear in every fold."""
    counts = train["label"].value_counts().reindex(range(len(class_names)), fill_value=0)
    needed = max(n_folds, 2)
    short = [f"{class_names[label]} (grade {label}): {count}" for label, count in counts.items() if count < needed]
    if short:
        raise NotEnoughImages(
            f"too few usable training images for folds={n_folds}: "
            + "; ".join(short)
            + f". Every class needs at least {needed}; all counts: "
            + ", ".join(f"{class_names[label]}={count}" for label, count in counts.items())
            + ". Add images, lower 'folds', or drop the class from data.class_folders."
        )


def make_folds(
    images: pd.DataFrame, class_names: list[str], n_folds: int, seed: int, holdout_fraction: float = 0.0
) -> pd.DataFrame:
    """Fold manifest of the labelled images (split ``train`` or ``holdout``).

    Holdout rows get fold -1. When there is no holdout split and `holdout_fraction` > 0, a
    stratified, patient-grouped share of the training images becomes the holdout. With
    ``n_folds == 1`` every training row gets fold -1 too and the holdout validates the one model.
    """
    table = images[images["split"].isin(["train", "holdout"])].reset_index(drop=True)
    table = table[FOLD_COLUMNS[:-1]].copy()
    table["fold"] = HOLDOUT
    train = table["split"] == "train"
    if not (table["split"] == "holdout").any() and holdout_fraction > 0:
        n_parts = max(2, round(1 / holdout_fraction))
        parts = _grouped_split(
            table.loc[train, "label"].to_numpy(), table.loc[train, "patient"].to_numpy(), n_parts, seed
        )
        carved = table.index[train][parts == 0]
        table.loc[carved, "split"] = "holdout"
        train = table["split"] == "train"
        log.info("carved %d images (%.0f %%) as holdout", len(carved), 100 * len(carved) / len(table))
    check_class_counts(table[train], class_names, n_folds)
    if n_folds > 1:
        table.loc[train, "fold"] = _grouped_split(
            table.loc[train, "label"].to_numpy(), table.loc[train, "patient"].to_numpy(), n_folds, seed
        )
    elif not (table["split"] == "holdout").any():
        raise NotEnoughImages(
            "folds: 1 trains one model and selects it on a holdout, but there is none: add a "
            "'validation/' folder or set data.holdout_fraction."
        )
    counts = pd.crosstab(table["fold"], table["label"])
    log.info("images per fold (rows) and grade (columns), fold -1 = holdout:\n%s", counts.to_string())
    return table
