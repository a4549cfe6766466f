"""Grading metrics: quadratic weighted kappa (the Kaggle DR metric), accuracy, confusion matrices."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score


def grades_from_scores(scores: np.ndarray, n_classes: int) -> np.ndarray:
    """Regression outputs to grades the way the seed did: round, then clip to the grade range."""
    return np.clip(np.rint(scores), 0, n_classes - 1).astype(int)


def quadratic_kappa(actual: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """QWK over the full grade range; 0.0 when it is undefined (a single grade on both sides)."""
    labels = list(range(n_classes))
    if len(actual) == 0:
        return float("nan")
    if len(set(np.asarray(actual).tolist()) | set(np.asarray(predicted).tolist())) < 2:
        return 1.0 if np.array_equal(actual, predicted) else 0.0
    return float(cohen_kappa_score(actual, predicted, weights="quadratic", labels=labels))


def grading_report(actual: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict:
    """QWK, accuracy, macro-F1 and the confusion matrix (rows = actual grade) as plain numbers."""
    labels = list(range(n_classes))
    matrix = confusion_matrix(actual, predicted, labels=labels) if len(actual) else np.zeros((n_classes,) * 2, int)
    return {
        "qwk": quadratic_kappa(actual, predicted, n_classes),
        "accuracy": float(accuracy_score(actual, predicted)) if len(actual) else float("nan"),
        "macro_f1": float(f1_score(actual, predicted, labels=labels, average="macro", zero_division=0))
        if len(actual)
        else float("nan"),
        "n": len(actual),
        "confusion_matrix": matrix.tolist(),
    }
