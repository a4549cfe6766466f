"""Tests of the synthetic fundus data set used by the demo workflow."""

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fundus_tl.synthetic import render_fundus, write_demo_dataset

TRAIN = (4, 3, 3, 3, 3)
VALIDATION = (2, 2, 2, 2, 2)
WIDTHS = {"min_width": 160, "max_width": 200}
NAME = re.compile(r"^(\d+)_(left|right)\.jpeg$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("demo")
    return out, write_demo_dataset(out, TRAIN, VALIDATION, seed=3, **WIDTHS)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_counts(dataset: tuple[Path, pd.DataFrame]) -> None:
    out, table = dataset
    assert list(table.columns) == ["split", "label", "path", "patient"]
    for split, counts in (("train", TRAIN), ("validation", VALIDATION)):
        for label, count in enumerate(counts):
            on_disk = sorted((out / split / f"class{label}").glob("*.jpeg"))
            assert len(on_disk) == count
            rows = table[(table.split == split) & (table.label == label)]
            assert sorted(out / p for p in rows.path) == on_disk
    # Nothing else, in particular no temporary files, is left behind.
    assert len(_files(out)) == sum(TRAIN) + sum(VALIDATION)


def test_same_arguments_give_identical_bytes(dataset: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    out, table = dataset
    again = write_demo_dataset(tmp_path / "again", TRAIN, VALIDATION, seed=3, **WIDTHS)
    pd.testing.assert_frame_equal(table, again)
    assert _files(out) == _files(tmp_path / "again")
    write_demo_dataset(tmp_path / "other", TRAIN, VALIDATION, seed=4, **WIDTHS)
    assert _files(out) != _files(tmp_path / "other")


def test_patients_and_names(dataset: tuple[Path, pd.DataFrame]) -> None:
    _, table = dataset
    names = table.path.map(lambda p: p.rsplit("/", 1)[1])
    assert names.is_unique
    parsed = names.str.extract(NAME.pattern)
    assert parsed.notna().all().all(), "names must look like <patient>_<left|right>.jpeg"
    assert (parsed[0] == table.patient).all()
    train = set(table.patient[table.split == "train"])
    validation = set(table.patient[table.split == "validation"])
    assert not train & validation
    eyes = table.groupby("patient").label.agg(["count", "min", "max"])
    assert (eyes["count"] <= 2).all()
    assert (eyes["count"] == 2).sum() >= 5, "most patients should contribute both eyes"
    assert (eyes["max"] - eyes["min"] <= 1).all(), "both eyes of a patient differ by at most one grade"


def test_images_look_like_fundus_photos(dataset: tuple[Path, pd.DataFrame]) -> None:
    out, table = dataset
    for rel, label in zip(table.path, table.label, strict=True):
        img = cv2.imread(str(out / rel), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        h, w = img.shape[:2]
        assert WIDTHS["min_width"] <= w <= WIDTHS["max_width"] and h < w
        for corner in (img[:5, :5], img[:5, -5:], img[-5:, :5], img[-5:, -5:]):
            assert corner.max() < 25
        centre = img[h // 2 - 10 : h // 2 + 10, w // 2 - 10 : w // 2 + 10]
        assert centre.mean() > 35
        # Orange-red retina: red dominates blue.
        assert centre[..., 2].mean() > centre[..., 0].mean() + 30
        if label <= 1:
            # The optic disc, the brightest blob without cotton-wool spots,
            # lies on the nasal side: left eyes mirror right eyes.
            glow = cv2.GaussianBlur(img[..., 1], (0, 0), h / 25)
            x = np.unravel_index(np.argmax(glow), glow.shape)[1]
            assert (x < w / 2) == ("_left" in rel)


def test_render_fundus_shape_and_determinism() -> None:
    img = render_fundus(2, np.random.default_rng(7), (120, 160))
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8
    assert np.array_equal(img, render_fundus(2, np.random.default_rng(7), (120, 160)))
    assert not np.array_equal(img, render_fundus(2, np.random.default_rng(8), (120, 160)))


def _lesion_fraction(img: np.ndarray) -> float:
    """Fraction of central pixels in blots darker or spots yellower than their surroundings."""
    h, w = img.shape[:2]
    diff = img.astype(np.int16) - cv2.medianBlur(img, 31).astype(np.int16)
    dark = (diff[..., 2] < -45).astype(np.uint8)
    # Opening drops thin vessels and keeps blot-like haemorrhages.
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    yellow = (diff[..., 1] > 30) & (diff[..., 0] < diff[..., 1])
    yy, xx = np.ogrid[:h, :w]
    centre = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (0.4 * h) ** 2
    return float(((dark > 0) | yellow)[centre].mean())


def test_lesion_signal_grows_with_grade() -> None:
    means = [
        np.mean([_lesion_fraction(render_fundus(g, np.random.default_rng([g, i]), (240, 320))) for i in range(8)])
        for g in range(5)
    ]
    assert means[4] > 2 * means[0]
    assert means[0] < means[2] < means[4]
    assert min(means[3], means[4]) > max(means[0], means[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_counts": (1, 1), "validation_counts": (1,)}, "one entry per class"),
        ({"train_counts": (1,) * 6, "validation_counts": (1,) * 6}, "classes"),
        ({"train_counts": (1, -1), "validation_counts": (1, 1)}, "negative"),
        ({"train_counts": (1,), "validation_counts": (1,), "min_width": 300, "max_width": 200}, "min_width"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_demo_dataset(tmp_path, **kwargs)


def test_render_fundus_rejects_unknown_grade() -> None:
    with pytest.raises(ValueError, match="grade"):
        render_fundus(5, np.random.default_rng(0), (100, 100))
