"""Assign training images to cross-validation folds, never splitting a patient.

EyePACS labels of a patient's two eyes agree with QWK 0.855; putting one eye in training and
the other in validation leaks, so folds (and a carved holdout) are grouped by patient.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from .imaging import quick_check

log = logging.getLogger(__name__)

HOLDOUT = -1
LABELLED_SPLITS = ["train", "holdout"]
FOLD_COLUMNS = ["key", "split", "image", "label", "patient", "fold"]
CHECK_THREADS = 8  # the check waits on the file system, not the CPU
SHOWN_PATHS = 5


class NotEnoughImages(ValueError):
    """Too few usable images or patients for the requested folds and holdout."""


def usable_images(images: pd.DataFrame) -> pd.DataFrame:
    """The labelled rows of `images` whose files pass `imaging.quick_check`; logs those left out and why.

    Leaving them out here keeps fold sizes, the class-count check and the class-balance plot true
    to what training gets. They stay in the skip report, which lists them from the cache indexes.
    """
    labelled = images[images["split"].isin(LABELLED_SPLITS)]
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        reasons = pd.Series(list(pool.map(quick_check, labelled["path"])), index=labelled.index, dtype=object)
    unusable = reasons.notna()
    if unusable.any():
        by_reason = reasons[unusable].value_counts()
        log.warning(
            "left out %d of %d labelled files that cannot be decoded: %s; first: %s",
            unusable.sum(),
            len(labelled),
            "; ".join(f"{count} {reason}" for reason, count in by_reason.items()),
            ", ".join(labelled.loc[unusable, "path"].head(SHOWN_PATHS)),
        )
    return labelled[~unusable]


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


def carve_holdout(train: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    """Which rows of `train` go to the holdout: about `fraction` of the images, whole patients.

    Each patient is stratified by its highest grade. A stratum's target is its share of
    round(fraction x images), apportioned by largest remainder so small strata still add up; its
    patients are walked in a seeded random order and taken while that brings the holdout's image
    count closer to the target (a tie takes the patient, so a stratum with a target reaches it).
    """
    patients = train.groupby("patient")["label"].agg(stratum="max", images="size").sort_index()
    strata = patients.groupby("stratum")["images"].sum()
    exact = fraction * strata.to_numpy()
    targets = np.floor(exact).astype(int)
    short = round(fraction * len(train)) - targets.sum()
    targets[np.argsort(targets - exact, kind="stable")[:short]] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for stratum, target in zip(strata.index, targets, strict=True):
        members = patients[patients["stratum"] == stratum]
        names, sizes = members.index.to_numpy(), members["images"].to_numpy()
        taken = 0
        for position in rng.permutation(len(members)):
            if taken < target and abs(taken + sizes[position] - target) <= target - taken:
                chosen.append(names[position])
                taken += sizes[position]
    return train["patient"].isin(chosen)


def check_patient_count(train: pd.DataFrame, n_folds: int, holdout_fraction: float, carved: bool) -> None:
    """Stop with what there is, what the settings need and what to change when folds cannot be made."""
    needed = n_folds if n_folds > 1 else 1
    patients = train["patient"].nunique()
    if patients >= needed:
        return
    after = f" left after carving data.holdout_fraction={holdout_fraction} as the holdout" if carved else ""
    raise NotEnoughImages(
        f"only {len(train)} usable training images from {patients} patients{after}; folds={n_folds} needs "
        f"at least {needed} patients, since a patient's images stay in one fold. Add images, lower 'folds'"
        + (
            ", or set data.holdout_fraction: 0 or add a 'validation/' folder to keep every image for training."
            if carved
            else "."
        )
    )


def make_folds(
    images: pd.DataFrame, class_names: list[str], n_folds: int, seed: int, holdout_fraction: float = 0.0
) -> pd.DataFrame:
    """Fold manifest of the labelled images (split ``train`` or ``holdout``).

    Holdout rows get fold -1. When there is no holdout split and `holdout_fraction` > 0, a
    stratified, patient-grouped share of the training images becomes the holdout. With
    ``n_folds == 1`` every training row gets fold -1 too and the holdout validates the one model.
    """
    table = images[images["split"].isin(LABELLED_SPLITS)].reset_index(drop=True)
    table = table[FOLD_COLUMNS[:-1]].copy()
    table["fold"] = HOLDOUT
    carved = not (table["split"] == "holdout").any() and holdout_fraction > 0
    if carved:
        table.loc[carve_holdout(table, holdout_fraction, seed), "split"] = "holdout"
        share = (table["split"] == "holdout").mean() if len(table) else 0.0
        log.info("carved %d images (%.1f %%) as holdout", (table["split"] == "holdout").sum(), 100 * share)
    train = table["split"] == "train"
    check_patient_count(table[train], n_folds, holdout_fraction, carved)
    check_class_counts(table[train], class_names, n_folds)
    if n_folds > 1:
        table.loc[train, "fold"] = _grouped_split(
            table.loc[train, "label"].to_numpy(), table.loc[train, "patient"].to_numpy(), n_folds, seed
        )
    elif not (table["split"] == "holdout").any():
        raise NotEnoughImages(
            "folds: 1 trains one model and selects it on a holdout, but there is none: add a "
            "'validation/' folder or set data.holdout_fraction"
            + (f" higher than {holdout_fraction}, which carves no patient from {len(table)} images." if carved else ".")
        )
    counts = pd.crosstab(table["fold"], table["label"])
    log.info("images per fold (rows) and grade (columns), fold -1 = holdout:\n%s", counts.to_string())
    return table
