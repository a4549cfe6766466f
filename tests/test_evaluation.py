"""Evaluation of an experiment on tiny real models and images: leaderboard, ROC placeholder, prediction."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from fundus_tl.cache import CachedImages, build_shard
from fundus_tl.evaluation import PLOTS, ROC_NOT_APPLICABLE, evaluate_experiment, leaderboard, predict_images
from fundus_tl.models import build_model, save_model_file

from .conftest import CLASSES, fundus_like

SIZE = 32
EPOCH_SECONDS = 5.0  # three epochs: 15 s, a quarter of a minute


def summary(name: str, training_seconds: float, oof: dict | None = None, validation: dict | None = None) -> dict:
    """The fields of ``summary.json`` that the leaderboard reads."""
    written = {
        "experiment": name,
        "model": "resnet18",
        "task": "classification",
        "folds": 5 if oof else 1,
        "image_size": SIZE,
        "parameters": 11_000_000,
        "training_seconds": training_seconds,
        "holdout": {"qwk": 0.612345, "accuracy": 0.5},
    }
    if oof:
        written["oof"] = oof
    if validation:
        written["validation"] = validation
    return written


def write_summaries(folder: Path, *summaries: dict) -> list[Path]:
    paths = []
    for content in summaries:
        path = folder / f"{content['experiment']}.json"
        path.write_text(json.dumps(content))
        paths.append(path)
    return paths


def test_leaderboard_leaves_out_of_fold_columns_empty_for_a_single_split(tmp_path):
    files = write_summaries(
        tmp_path,
        summary("five_folds", 600.0, oof={"qwk": 0.812345, "accuracy": 0.75}),
        summary("single_split", 15.0, validation={"qwk": 0.612345, "accuracy": 0.5}),
    )
    leaderboard(files, tmp_path / "leaderboard.tsv")

    board = pd.read_csv(tmp_path / "leaderboard.tsv", sep="\t").set_index("experiment")
    assert board.loc["five_folds", ["oof_qwk", "oof_accuracy"]].tolist() == [0.8123, 0.75]
    assert board.loc["single_split", ["oof_qwk", "oof_accuracy"]].isna().all()
    assert board.loc["single_split", "holdout_qwk"] == 0.6123
    assert not any("validation" in column for column in board.columns)
    header, _, last = (tmp_path / "leaderboard.tsv").read_text().splitlines()
    fields = dict(zip(header.split("\t"), last.split("\t"), strict=True))
    assert fields["experiment"] == "single_split" and fields["oof_qwk"] == fields["oof_accuracy"] == ""


def test_leaderboard_keeps_sub_minute_training_times(tmp_path):
    files = write_summaries(
        tmp_path,
        summary("quick", 15.0, oof={"qwk": 0.5, "accuracy": 0.5}),
        summary("quicker", 2.4, oof={"qwk": 0.5, "accuracy": 0.5}),
        summary("long", 5432.1, oof={"qwk": 0.5, "accuracy": 0.5}),
    )
    leaderboard(files, tmp_path / "leaderboard.tsv")

    board = pd.read_csv(tmp_path / "leaderboard.tsv", sep="\t").set_index("experiment")
    assert board["training_minutes"].to_dict() == {"quick": 0.25, "quicker": 0.04, "long": 90.54}


def history(epochs: int = 3) -> pd.DataFrame:
    epoch = np.arange(1, epochs + 1)
    return pd.DataFrame(
        {
            "epoch": epoch,
            "train_loss": 1.0 / epoch,
            "val_loss": 1.2 / epoch,
            "val_qwk": 0.2 * epoch,
            "lr": 1e-3,
            "seconds": EPOCH_SECONDS,
        }
    )


def write_model(path: Path, task: str) -> None:
    """An untrained resnet18 with a linear head, saved as training saves it."""
    outputs = 1 if task == "regression" else len(CLASSES)
    meta = {
        "model": "resnet18",
        "task": task,
        "classes": CLASSES,
        "outputs": outputs,
        "head": "linear",
        "dropout": 0.0,
        "image_size": SIZE,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "imagenet_inputs": False,
        "monitor": "val_loss",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model_file(path, build_model("resnet18", outputs, head="linear", dropout=0.0).eval(), meta)


def cache_images(folder: Path, count: int, broken: int = 0) -> tuple[CachedImages, pd.DataFrame]:
    """`count` fundus-like images (grade = index mod 5) and `broken` unreadable files, cached in one shard."""
    folder.mkdir(parents=True)
    rows = []
    for index in range(count):
        path = folder / f"{index}_left.jpeg"
        cv2.imwrite(str(path), fundus_like(index % len(CLASSES), seed=index))
        rows.append({"key": f"{folder.name}/{path.name}", "path": str(path), "label": index % len(CLASSES)})
    for index in range(broken):
        path = folder / f"broken{index}.jpeg"
        path.write_bytes(b"\xff\xd8\xff not really")
        rows.append({"key": f"{folder.name}/{path.name}", "path": str(path), "label": -1})
    items = pd.DataFrame(rows, columns=["key", "path", "label"])
    shard = folder.parent / f"{folder.name}.npy"
    build_shard(items[["key", "path"]], shard, shard.with_suffix(".tsv"), SIZE, "none")
    return CachedImages([shard]), items


def single_split_run(tmp_path: Path, task: str, constant: bool = False) -> dict:
    """Evaluate a ``folds: 1`` experiment: one model, its validation predictions on the holdout (`constant`: one
    score for every image, as a model that learned nothing gives)."""
    images, items = cache_images(tmp_path / "holdout", count=10)
    manifest = items.assign(
        split="holdout", image=items["key"].map(lambda key: Path(key).stem), patient=items.index.astype(str), fold=-1
    )
    fold = tmp_path / "fold-1"
    write_model(fold / "model.pt", task)
    history().to_csv(fold / "history.tsv", sep="\t", index=False)
    validation = manifest[["key", "image", "label", "fold"]].copy()
    rng = np.random.default_rng(0)
    if task == "regression":
        validation["score"] = 1.25 if constant else validation["label"] + rng.normal(0, 0.4, len(validation))
        validation["predicted"] = validation["score"].round().clip(0, len(CLASSES) - 1).astype(int)
    else:
        probabilities = rng.dirichlet(np.ones(len(CLASSES)), len(validation))
        for grade in range(len(CLASSES)):
            validation[f"p{grade}"] = probabilities[:, grade]
        validation["predicted"] = probabilities.argmax(axis=1)
    validation.to_csv(fold / "oof.tsv", sep="\t", index=False)
    return evaluate_experiment(
        experiment_name=task,
        model_files=[str(fold / "model.pt")],
        oof_files=[str(fold / "oof.tsv")],
        history_files=[str(fold / "history.tsv")],
        manifest=manifest,
        holdout_images=images,
        summary_out=tmp_path / "summary.json",
        holdout_out=tmp_path / "holdout_predictions.csv",
        plots={name: tmp_path / "plots" / f"{name}.png" for name in PLOTS},
        batch_size=4,
        device="cpu",
    )


@pytest.fixture
def figure_texts(monkeypatch) -> dict[str, list[str]]:
    """The title and free texts of every figure saved, by the stem of its final name ("roc")."""
    drawn: dict[str, list[str]] = {}
    save = Figure.savefig

    def recording(self, filename, **kwargs):
        drawn[Path(filename).name.removeprefix(".").split(".")[0]] = [
            self.get_suptitle(),
            *(text.get_text() for text in self.texts),
        ]
        return save(self, filename, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return drawn


def test_single_split_regression_says_roc_does_not_apply_and_has_no_out_of_fold_scores(tmp_path, figure_texts):
    result = single_split_run(tmp_path, "regression")

    assert "validation" in result and "oof" not in result and result["holdout"]["n"] == 10
    assert ROC_NOT_APPLICABLE in figure_texts["roc"] and not any("no data" in text for text in figure_texts["roc"])
    assert "classification" in ROC_NOT_APPLICABLE and "regression" in ROC_NOT_APPLICABLE
    assert imread(tmp_path / "plots/roc.png").shape[1] >= 600
    leaderboard([tmp_path / "summary.json"], tmp_path / "leaderboard.tsv")
    board = pd.read_csv(tmp_path / "leaderboard.tsv", sep="\t")
    assert board[["oof_qwk", "oof_accuracy"]].isna().all(axis=None)
    assert board.loc[0, "holdout_qwk"] == pytest.approx(result["holdout"]["qwk"], abs=1e-4)
    assert board.loc[0, "training_minutes"] == 3 * EPOCH_SECONDS / 60


def test_single_split_classification_draws_roc_curves(tmp_path, figure_texts):
    single_split_run(tmp_path, "classification")

    assert ROC_NOT_APPLICABLE not in figure_texts["roc"] and "holdout, one-vs-rest" in figure_texts["roc"][0]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_prediction_without_usable_images_keeps_every_column_and_warns(tmp_path, caplog, task):
    write_model(tmp_path / "fold0/model.pt", task)
    summary_file = tmp_path / "summary.json"
    thresholds = {"values": [0.5, 1.5, 2.5, 3.5]} if task == "regression" else {}
    summary_file.write_text(json.dumps({"thresholds": thresholds} if thresholds else {}))
    common = {"model_files": [str(tmp_path / "fold0/model.pt")], "summary_file": summary_file, "device": "cpu"}

    some, _ = cache_images(tmp_path / "some", count=3)
    predict_images(images=some, out_csv=tmp_path / "some.csv", test_dir=tmp_path / "some", **common)
    empty_dir = tmp_path / "only broken files"
    nothing, _ = cache_images(empty_dir, count=0, broken=2)
    with caplog.at_level(logging.INFO, logger="fundus_tl.evaluation"):
        table = predict_images(images=nothing, out_csv=tmp_path / "none.csv", test_dir=empty_dir, **common)

    predicted = pd.read_csv(tmp_path / "some.csv")
    written = pd.read_csv(tmp_path / "none.csv")
    assert len(predicted) == 3 and written.empty and table.empty
    assert written.columns.tolist() == predicted.columns.tolist()
    expected = ["score"] if task == "regression" else [f"p{grade}" for grade in range(len(CLASSES))]
    assert {"image", "grade", "key", *expected} <= set(written.columns)
    assert ("grade_rounded" in written.columns) == (task == "regression")
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"no usable images in {empty_dir}" in warnings[0] and "has only its header" in warnings[0]
    assert "2 could not be read" in warnings[0]


def test_a_model_that_gives_every_image_one_output_is_called_out(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fundus_tl.evaluation"):
        single_split_run(tmp_path / "flat", "regression", constant=True)
    assert any("fold -1 gives every one of its 10 validation images the same output" in m for m in caplog.messages)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fundus_tl.evaluation"):
        single_split_run(tmp_path / "varied", "regression")
    assert not any("same output" in message for message in caplog.messages)
