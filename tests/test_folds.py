import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fundus_tl.folds import NotEnoughImages, make_folds, usable_images

from .conftest import fundus_like


def labelled(n_patients: int, grades: list[int]) -> pd.DataFrame:
    rows = []
    for patient in range(n_patients):
        grade = grades[patient % len(grades)]
        for eye in ("left", "right"):
            image = f"{patient}_{eye}"
            rows.append(
                {
                    "key": f"train/{image}.jpeg",
                    "split": "train",
                    "image": image,
                    "label": grade,
                    "patient": str(patient),
                    "path": "",
                }
            )
    return pd.DataFrame(rows)


def test_folds_are_stratified_and_never_split_a_patient():
    table = make_folds(labelled(60, [0, 0, 0, 1, 2, 3, 4]), [f"c{i}" for i in range(5)], 5, seed=0)
    assert set(table["fold"]) == {0, 1, 2, 3, 4}
    assert (table.groupby("patient")["fold"].nunique() == 1).all()
    per_fold = pd.crosstab(table["fold"], table["label"])
    assert (per_fold > 0).all().all()
    assert table.equals(make_folds(labelled(60, [0, 0, 0, 1, 2, 3, 4]), [f"c{i}" for i in range(5)], 5, seed=0))


def test_holdout_is_carved_by_patient_when_there_is_no_validation_folder():
    table = make_folds(labelled(80, [0, 1, 2, 3, 4]), [f"c{i}" for i in range(5)], 3, seed=1, holdout_fraction=0.2)
    holdout = table[table["split"] == "holdout"]
    assert 0.15 < len(holdout) / len(table) < 0.25
    assert (holdout["fold"] == -1).all()
    assert not set(holdout["patient"]) & set(table.loc[table["split"] == "train", "patient"])


def test_a_class_smaller_than_the_fold_count_stops_with_names_and_counts():
    data = labelled(30, [0, 1, 2, 3])
    data = pd.concat([data, labelled(1, [4]).assign(patient="x")], ignore_index=True)
    with pytest.raises(NotEnoughImages, match=r"c4 \(grade 4\): 2"):
        make_folds(data, [f"c{i}" for i in range(5)], 5, seed=0)


def image_rows(paths: dict[str, int]) -> pd.DataFrame:
    """Labelled training rows for files on disk, `{path: grade}`; each file is its own patient."""
    return pd.DataFrame(
        [
            {"key": f"train/{Path(path).name}", "split": "train", "path": path, "image": Path(path).stem}
            | {"label": grade, "patient": Path(path).stem}
            for path, grade in paths.items()
        ]
    )


def test_undecodable_files_are_left_out_before_the_folds(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    grades = {}
    for grade in (0, 1, 2):
        for number in range(4 if grade < 2 else 2):
            path = tmp_path / f"g{grade}_{number}.jpg"
            cv2.imwrite(str(path), fundus_like(grade, number))
            grades[str(path)] = grade
    good = Path(next(iter(grades))).read_bytes()
    (tmp_path / "empty.jpg").touch()
    (tmp_path / "notes.jpg").write_text("scanned on Tuesday")
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 2])
    bad = {str(tmp_path / name): 2 for name in ("empty.jpg", "notes.jpg", "cut.jpg")}
    classes = ["c0", "c1", "c2"]

    with caplog.at_level(logging.WARNING):
        usable = usable_images(image_rows(grades | bad))
    assert sorted(usable["path"]) == sorted(grades)
    assert "left out 3 of 13 labelled files" in caplog.text
    for reason in ("empty file (0 bytes)", "not a readable image", "truncated JPEG"):
        assert f"1 {reason}" in caplog.text
    table = make_folds(usable, classes, 2, seed=0)
    assert set(table["key"]) == {f"train/{Path(path).name}" for path in grades}
    # Grade 2 has five files but two usable images: too few for three folds.
    with pytest.raises(NotEnoughImages, match=r"c2 \(grade 2\): 2"):
        make_folds(usable, classes, 3, seed=0)


def patients_with_one_or_two_eyes(n_patients: int, seed: int) -> pd.DataFrame:
    """EyePACS-like grades (skewed to 0; a second eye at the same grade or one lower)."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(n_patients):
        grade = int(rng.choice(5, p=[0.55, 0.12, 0.18, 0.08, 0.07]))
        eyes = [grade] if rng.random() < 0.3 else [grade, max(grade - int(rng.integers(0, 2)), 0)]
        for eye, label in zip(("left", "right"), eyes, strict=False):
            image = f"{patient}_{eye}"
            rows.append({"key": f"train/{image}", "split": "train", "image": image, "label": label})
            rows[-1]["patient"] = str(patient)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3, 0.4, 0.45])
def test_carved_holdout_share_follows_the_fraction(fraction: float):
    classes = [f"c{i}" for i in range(5)]
    for seed in (0, 1, 2):
        images = patients_with_one_or_two_eyes(200, seed)
        table = make_folds(images, classes, 2, seed=seed, holdout_fraction=fraction)
        holdout, train = table[table["split"] == "holdout"], table[table["split"] == "train"]
        assert abs(len(holdout) / len(table) - fraction) <= 0.03, (seed, len(holdout), len(table))
        assert not set(holdout["patient"]) & set(train["patient"])
        patients_per_grade = images.groupby("label")["patient"].nunique()
        for grade in set(train["label"]):
            if patients_per_grade[grade] >= 1 / fraction:
                assert grade in set(holdout["label"]), (seed, grade)
        assert table.equals(make_folds(images, classes, 2, seed=seed, holdout_fraction=fraction))


def test_too_few_patients_stop_with_what_there_is_and_what_to_change():
    classes = [f"c{i}" for i in range(5)]
    with pytest.raises(NotEnoughImages, match=r"only 0 usable training images from 0 patients.*folds=5"):
        make_folds(labelled(5, [0]).iloc[:0], classes, 5, seed=0)
    many_eyes = pd.concat([labelled(1, [grade]).assign(patient=str(grade)) for grade in range(5)] * 3)
    with pytest.raises(NotEnoughImages, match=r"30 usable training images from 5 patients; folds=6 needs at least 6"):
        make_folds(many_eyes, classes, 6, seed=0)
    with pytest.raises(NotEnoughImages, match=r"left after carving data.holdout_fraction=0.4.*holdout_fraction: 0"):
        make_folds(many_eyes, classes, 5, seed=0, holdout_fraction=0.4)
