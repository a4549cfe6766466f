"""Shared fixtures: small real images on disk, written the way users' data sets look."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

CLASSES = ["class0", "class1", "class2", "class3", "class4"]


def fundus_like(grade: int, seed: int, width: int = 160, height: int = 120) -> np.ndarray:
    """A small BGR disc on black with `grade` bright spots: enough structure to be learnable."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    centre = (width // 2, height // 2)
    radius = height // 2 - 2
    cv2.circle(image, centre, radius, (40, 80, 170), thickness=-1)
    for _ in range(grade * 3):
        angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(0, radius * 0.8)
        spot = (int(centre[0] + distance * np.cos(angle)), int(centre[1] + distance * np.sin(angle)))
        cv2.circle(image, spot, 4, (90, 220, 240), thickness=-1)
    noise = rng.normal(0, 4, image.shape)
    return np.clip(image + noise * (image > 0), 0, 255).astype(np.uint8)


def write_class_folders(root: Path, split: str, per_class: list[int], first_patient: int = 0) -> list[Path]:
    """Write ``root/split/classK/{patient}_{eye}.jpeg``; both eyes of a patient share the grade."""
    written = []
    patient = first_patient
    for grade, count in enumerate(per_class):
        folder = root / split / CLASSES[grade]
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            eye = "left" if index % 2 == 0 else "right"
            path = folder / f"{patient}_{eye}.jpeg"
            cv2.imwrite(str(path), fundus_like(grade, seed=patient * 2 + index % 2))
            written.append(path)
            if eye == "right":
                patient += 1
        patient += 1
    return written


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """A seed-layout data set (train + validation) under a path with spaces."""
    root = tmp_path / "data set with spaces"
    write_class_folders(root, "train", [8, 6, 6, 6, 6])
    write_class_folders(root, "validation", [2, 2, 2, 2, 2], first_patient=1000)
    return root
