"""Grading metrics: quadratic weighted kappa (the Kaggle DR metric), accuracy, confusion matrices,
and the grade thresholds that turn a continuous score into grades."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def grades_from_scores(scores: np.ndarray, n_classes: int) -> np.ndarray:
    """Regression outputs to grades the way the seed did: round, then clip to the grade range."""
    return np.clip(np.rint(scores), 0, n_classes - 1).astype(int)


def default_thresholds(n_classes: int) -> list[float]:
    """0.5, 1.5, …: the cut points between grades that plain rounding uses."""
    return [grade + 0.5 for grade in range(n_classes - 1)]


def grades_from_thresholds(scores: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """Grade = number of thresholds the score reaches."""
    return np.searchsorted(np.asarray(thresholds), np.asarray(scores), side="right").astype(int)


def quadratic_kappa(actual: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """QWK over the full grade range; 1.0/0.0 when only one grade occurs on both sides."""
    labels = list(range(n_classes))
    if len(actual) == 0:
        return float("nan")
    if len(set(np.asarray(actual).tolist()) | set(np.asarray(predicted).tolist())) < 2:
        return 1.0 if np.array_equal(actual, predicted) else 0.0
    return float(cohen_kappa_score(actual, predicted, weights="quadratic", labels=labels))


def optimise_thresholds(scores: np.ndarray, actual: np.ndarray, n_classes: int, sweeps: int = 20) -> list[float]:
    """Thresholds that maximise QWK on (`scores`, `actual`), by coordinate search from 0.5, 1.5, ….

    Each threshold in turn moves to the best of a fine grid between its neighbours; sweeps stop
    when nothing improves. Deterministic, and never worse than plain rounding on these data.
    """
    thresholds = default_thresholds(n_classes)
    best = quadratic_kappa(actual, grades_from_thresholds(scores, thresholds), n_classes)
    if len(np.unique(scores)) < 2:
        return thresholds  # one score for every image: no cut point can tell them apart
    low, high = float(np.min(scores)), float(np.max(scores))  # a cut outside the scores separates nothing
    for _ in range(sweeps):
        improved = False
        for index in range(len(thresholds)):
            lower = thresholds[index - 1] if index else low
            upper = thresholds[index + 1] if index + 1 < len(thresholds) else high
            for candidate in np.linspace(lower, upper, 41)[1:-1]:
                trial = [*thresholds[:index], float(candidate), *thresholds[index + 1 :]]
                score = quadratic_kappa(actual, grades_from_thresholds(scores, trial), n_classes)
                if score > best + 1e-12:
                    best, thresholds, improved = score, trial, True
        if not improved:
            break
    if len(np.unique(grades_from_thresholds(scores, thresholds))) < min(2, len(np.unique(actual))):
        return default_thresholds(n_classes)  # a "fit" that gives every image one grade is no fit
    return [round(value, 6) for value in thresholds]


def grading_report(actual: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict:
    """QWK, accuracy, macro-F1, per-grade precision/recall/support and confusion matrices (rows = actual)."""
    labels = list(range(n_classes))
    if len(actual) == 0:
        empty = np.zeros((n_classes, n_classes), int)
        return {
            "qwk": float("nan"),
            "accuracy": float("nan"),
            "macro_f1": float("nan"),
            "n": 0,
            "per_class": [],
            "confusion_matrix": empty.tolist(),
            "confusion_matrix_normalised": empty.tolist(),
        }
    matrix = confusion_matrix(actual, predicted, labels=labels)
    precision, recall, _, support = precision_recall_fscore_support(actual, predicted, labels=labels, zero_division=0)
    row_sums = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, row_sums, out=np.zeros(matrix.shape), where=row_sums > 0)
    return {
        "qwk": quadratic_kappa(actual, predicted, n_classes),
        "accuracy": float(accuracy_score(actual, predicted)),
        "macro_f1": float(f1_score(actual, predicted, labels=labels, average="macro", zero_division=0)),
        "n": len(actual),
        "per_class": [
            {"grade": grade, "precision": float(p), "recall": float(r), "support": int(s)}
            for grade, p, r, s in zip(labels, precision, recall, support, strict=True)
        ],
        "confusion_matrix": matrix.tolist(),
        "confusion_matrix_normalised": np.round(normalised, 4).tolist(),
    }
