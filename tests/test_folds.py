import pandas as pd
import pytest

from fundus_tl.folds import NotEnoughImages, make_folds


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
