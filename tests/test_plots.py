from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from fundus_tl.plots import (
    plot_class_balance,
    plot_confusion_matrices,
    plot_learning_curves,
    plot_placeholder,
    plot_roc_curves,
)

CLASSES = ["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"]


def assert_picture(path: Path) -> None:
    """A decodable, README-sized, non-blank PNG, and nothing else left beside it."""
    pixels = imread(path)
    assert pixels.shape[1] >= 600 and pixels.shape[0] >= 200
    assert pixels.var() > 0
    leftovers = [entry.name for entry in path.parent.iterdir() if entry.suffix != ".png" or entry.name.startswith(".")]
    assert leftovers == []


def history(epochs: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    epoch = np.arange(1, epochs + 1)
    return pd.DataFrame(
        {
            "epoch": epoch,
            "train_loss": 1.5 * np.exp(-epoch / 4) + 0.3,
            "train_accuracy": np.linspace(0.4, 0.9, epochs),
            "val_loss": 1.4 * np.exp(-epoch / 3) + 0.5 + 0.02 * np.maximum(epoch - 5, 0) ** 2,
            "val_accuracy": np.linspace(0.4, 0.7, epochs),
            "val_qwk": np.clip(0.8 - 0.6 * np.exp(-epoch / 3) + rng.normal(0, 0.02, epochs), -1, 1),
            "lr": 1e-4 * 0.5 ** (epoch // 4),
            "seconds": 30.0,
            "images_per_second": 40.0,
        }
    )


def test_confusion_matrices_for_five_and_three_classes_and_an_empty_row(tmp_path):
    five = [[50, 5, 2, 0, 0], [6, 12, 4, 1, 0], [2, 5, 20, 3, 1], [0, 1, 4, 8, 2], [0, 0, 1, 2, 9]]
    three = [[10, 2, 0], [0, 0, 0], [1, 1, 5]]  # nobody of the middle grade: its recall row is empty
    plot_confusion_matrices(five, CLASSES, "oof", tmp_path / "five.png")
    plot_confusion_matrices(three, ["none", "non-proliferative", "proliferative"], "holdout", tmp_path / "three.png")
    plot_confusion_matrices([], CLASSES, "nothing evaluated", tmp_path / "empty.png")
    for name in ("five.png", "three.png", "empty.png"):
        assert_picture(tmp_path / name)


def test_confusion_matrix_rejects_a_shape_that_does_not_match_the_class_names(tmp_path):
    with pytest.raises(ValueError, match="does not match 3 class names"):
        plot_confusion_matrices([[1, 0], [0, 1]], ["a", "b", "c"], "bad", tmp_path / "bad.png")
    assert list(tmp_path.iterdir()) == []


def test_a_failing_write_raises_and_leaves_no_partial_file(tmp_path, monkeypatch):
    blocker = tmp_path / "not a folder"
    blocker.write_text("a file where the output folder should be")
    with pytest.raises(OSError):
        plot_confusion_matrices([[3, 1], [0, 4]], ["a", "b"], "t", blocker / "cm.png")
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["not a folder"]

    final = tmp_path / "out" / "cm.png"
    final.parent.mkdir()

    def interrupted(self, filename, **kwargs):
        Path(filename).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", interrupted)
    with pytest.raises(OSError, match="disk full"):
        plot_confusion_matrices([[3, 1], [0, 4]], ["a", "b"], "t", final)
    assert list(final.parent.iterdir()) == []


def test_learning_curves_for_several_folds_one_fold_nan_qwk_and_no_epochs(tmp_path):
    folds = {f"fold {fold}": history(12 - fold, seed=fold) for fold in range(3)}
    folds["fold 1"].loc[:2, "val_qwk"] = np.nan
    plot_learning_curves(folds, tmp_path / "folds.png")
    plot_learning_curves({"fold -1": history(1, seed=0)}, tmp_path / "one_epoch.png", monitor="val_qwk")
    plot_learning_curves({"fold 0": history(5, seed=0).assign(val_qwk=np.nan)}, tmp_path / "no_qwk.png")
    plot_learning_curves({}, tmp_path / "none.png")
    plot_learning_curves({"fold 0": history(3, seed=0).iloc[:0]}, tmp_path / "empty_table.png")
    for name in ("folds.png", "one_epoch.png", "no_qwk.png", "none.png", "empty_table.png"):
        assert_picture(tmp_path / name)


def test_class_balance_with_folds_and_holdout_with_one_fold_and_empty(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.choice(3, 120, p=[0.6, 0.3, 0.1])
    folds = np.where(np.arange(120) < 30, -1, np.arange(120) % 4)
    table = pd.DataFrame(
        {
            "key": [f"train/{index}.jpeg" for index in range(120)],
            "split": np.where(folds == -1, "holdout", "train"),
            "image": [str(index) for index in range(120)],
            "label": labels,
            "patient": [str(index // 2) for index in range(120)],
            "fold": folds,
        }
    )
    names = ["none", "mild", "severe"]
    plot_class_balance(table, names, tmp_path / "folds.png")
    plot_class_balance(table.assign(fold=-1), names, tmp_path / "one_fold.png")
    plot_class_balance(table.iloc[:0], names, tmp_path / "empty.png")
    for name in ("folds.png", "one_fold.png", "empty.png"):
        assert_picture(tmp_path / name)
    with pytest.raises(ValueError, match=r"labels \[2\] are outside"):
        plot_class_balance(table, names[:2], tmp_path / "bad.png")


def test_roc_curves_skip_a_grade_missing_from_the_actual_grades(tmp_path):
    rng = np.random.default_rng(1)
    actual = rng.choice([0, 2], 60)  # grade 1 never occurs: no positives, so no ROC for it
    probabilities = rng.dirichlet(np.ones(3), 60)
    probabilities[np.arange(60), actual] += 0.4
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    plot_roc_curves(actual, probabilities, ["none", "mild", "severe"], "K=3", tmp_path / "three.png")
    plot_roc_curves(np.zeros(5, int), rng.dirichlet(np.ones(5), 5), CLASSES, "one grade", tmp_path / "one.png")
    plot_roc_curves([], np.zeros((0, 5)), CLASSES, "nothing", tmp_path / "empty.png")
    for name in ("three.png", "one.png", "empty.png"):
        assert_picture(tmp_path / name)
    with pytest.raises(ValueError, match="do not match"):
        plot_roc_curves(actual, probabilities[:, :2], ["none", "mild", "severe"], "bad", tmp_path / "bad.png")


def test_placeholder_is_a_readme_sized_picture_with_a_two_line_reason(tmp_path):
    plot_placeholder(
        "regress: ROC curves", "ROC curves apply to classification:\nthis is a regression", tmp_path / "roc.png"
    )
    assert_picture(tmp_path / "roc.png")
