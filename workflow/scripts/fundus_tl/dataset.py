"""Find the images of a data set and their labels without decoding anything.

The scan is cheap (directory listings and one CSV) so it can run when Snakemake parses the
workflow: its result decides which files each cache shard depends on. Every file found is
either an image candidate or listed with the reason it is not used.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp")
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
DEFAULT_PATIENT_PATTERN = r"^(?P<patient>.+)_(?:left|right)$"

IMAGE_COLUMNS = ["key", "split", "path", "image", "label", "patient"]
SKIP_COLUMNS = ["path", "reason"]


@dataclass
class Scan:
    """Image candidates (one row per file, keyed ``split/relative path``) and skipped files."""

    images: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=IMAGE_COLUMNS))
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SKIP_COLUMNS))

    def __add__(self, other: Scan) -> Scan:
        return Scan(
            pd.concat([self.images, other.images], ignore_index=True),
            pd.concat([self.skipped, other.skipped], ignore_index=True),
        )


def patient_of(image: str, pattern: str = DEFAULT_PATIENT_PATTERN) -> str:
    """Patient id from an image name such as ``10_left``; an unmatched name is its own group."""
    match = re.match(pattern, image, flags=re.IGNORECASE)
    if match and match.groupdict().get("patient"):
        return match.group("patient")
    return image


def shard_of(key: str, n_shards: int) -> int:
    """Stable shard number of an image key, so adding an image changes one shard only."""
    return zlib.crc32(key.encode("utf-8")) % n_shards


def _non_image_reason(name: str) -> str | None:
    if name.startswith("."):
        return "hidden file"
    if name.lower() in IGNORED_NAMES:
        return "system file"
    if not name.lower().endswith(IMAGE_EXTENSIONS):
        return f"not an image extension (expected one of {', '.join(IMAGE_EXTENSIONS)})"
    return None


def _walk_files(folder: Path) -> list[Path]:
    """All files below `folder`, sorted, following no symlinked directories twice."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found.extend(Path(dirpath) / name for name in sorted(filenames))
    return found


def _scan_class_folder(folder: Path, split: str, split_root: Path, label: int, patient_pattern: str) -> Scan:
    rows, skipped = [], []
    for path in _walk_files(folder):
        if path.parent != folder:
            skipped.append((str(path), f"in sub-folder '{path.parent.name}' of a class folder"))
            continue
        reason = _non_image_reason(path.name)
        if reason:
            skipped.append((str(path), reason))
            continue
        relative = path.relative_to(split_root).as_posix()
        image = path.stem
        rows.append((f"{split}/{relative}", split, str(path), image, label, patient_of(image, patient_pattern)))
    return Scan(pd.DataFrame(rows, columns=IMAGE_COLUMNS), pd.DataFrame(skipped, columns=SKIP_COLUMNS))


def scan_class_folders(
    split_root: str | os.PathLike,
    split: str,
    class_folders: list[str],
    patient_pattern: str = DEFAULT_PATIENT_PATTERN,
) -> Scan:
    """Scan ``split_root/<class_folder>/*``; the position in `class_folders` is the grade."""
    split_root = Path(split_root)
    scan = Scan()
    for label, name in enumerate(class_folders):
        folder = split_root / name
        if folder.is_dir():
            scan = scan + _scan_class_folder(folder, split, split_root, label, patient_pattern)
    stray = []
    for entry in sorted(split_root.iterdir()):
        if entry.name in class_folders:
            continue
        if entry.is_dir():
            stray.extend(
                (str(path), f"folder '{entry.name}' is not in data.class_folders") for path in _walk_files(entry)
            )
        else:
            stray.append((str(entry), "file outside the class folders"))
    scan.skipped = pd.concat([scan.skipped, pd.DataFrame(stray, columns=SKIP_COLUMNS)], ignore_index=True)
    scan.images["label"] = scan.images["label"].astype(int)
    return scan


def scan_unlabeled(
    folder: str | os.PathLike, split: str = "test", patient_pattern: str = DEFAULT_PATIENT_PATTERN
) -> Scan:
    """Scan a folder of images without labels (label -1), including its sub-folders."""
    folder = Path(folder)
    rows, skipped = [], []
    for path in _walk_files(folder):
        reason = _non_image_reason(path.name)
        if reason:
            skipped.append((str(path), reason))
            continue
        relative = path.relative_to(folder).as_posix()
        rows.append((f"{split}/{relative}", split, str(path), path.stem, -1, patient_of(path.stem, patient_pattern)))
    images = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    images["label"] = images["label"].astype(int)
    return Scan(images, pd.DataFrame(skipped, columns=SKIP_COLUMNS))


def scan_labels_csv(
    images_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    n_classes: int,
    patient_pattern: str = DEFAULT_PATIENT_PATTERN,
    image_column: str = "image",
    label_column: str = "level",
) -> Scan:
    """Scan the Kaggle/EyePACS layout: a flat image folder plus ``image,level`` rows.

    Names in the CSV carry no extension; the file is found among the image extensions in any case.
    Rows and files that do not pair up are listed as skipped rather than dropped silently.
    """
    images_dir, labels_csv = Path(images_dir), Path(labels_csv)
    table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    missing = {image_column, label_column} - set(table.columns)
    if missing:
        raise ValueError(
            f"{labels_csv}: missing column(s) {sorted(missing)}; found {list(table.columns)}. "
            f"Set data.csv_image_column / data.csv_label_column to the names used in the file."
        )
    unlabeled = scan_unlabeled(images_dir, "train", patient_pattern)
    by_stem: dict[str, list[int]] = {}
    for index, stem in enumerate(unlabeled.images["image"]):
        by_stem.setdefault(stem, []).append(index)

    skipped = [tuple(row) for row in unlabeled.skipped.itertuples(index=False)]
    labels = {}
    seen = set()
    for line, (name, level) in enumerate(zip(table[image_column], table[label_column], strict=True), start=2):
        where = f"{labels_csv} line {line}"
        stem = Path(name.strip()).stem if Path(name.strip()).suffix.lower() in IMAGE_EXTENSIONS else name.strip()
        if stem in seen:
            skipped.append((where, f"duplicate row for image '{stem}'"))
            continue
        seen.add(stem)
        try:
            grade = int(level)
        except ValueError:
            skipped.append((where, f"label '{level}' of image '{stem}' is not an integer"))
            continue
        if not 0 <= grade < n_classes:
            skipped.append((where, f"label {grade} of image '{stem}' is outside 0..{n_classes - 1}"))
            continue
        if stem not in by_stem:
            skipped.append((where, f"no image file for '{stem}' in {images_dir}"))
            continue
        labels[stem] = grade

    rows = []
    for stem, indices in by_stem.items():
        for index in indices:
            record = unlabeled.images.iloc[index]
            if stem not in labels:
                skipped.append((record["path"], f"no label row in {labels_csv.name}"))
            elif len(indices) > 1:
                skipped.append((record["path"], f"several files for image '{stem}'"))
            else:
                rows.append({**record.to_dict(), "label": labels[stem]})
    images = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    images["label"] = images["label"].astype(int)
    return Scan(images, pd.DataFrame(skipped, columns=SKIP_COLUMNS))


def scan_dataset(data: dict) -> Scan:
    """Scan what the ``data:`` config section describes: training, holdout and test images.

    Splits are ``train``, ``holdout`` (the ``validation/`` folder, when present) and ``test``.
    """
    pattern = data.get("patient_pattern", DEFAULT_PATIENT_PATTERN)
    class_folders = list(data["class_folders"])
    if data.get("layout", "folders") == "csv":
        scan = scan_labels_csv(
            data["images_dir"],
            data["labels_csv"],
            len(class_folders),
            pattern,
            data.get("csv_image_column", "image"),
            data.get("csv_label_column", "level"),
        )
    else:
        root = Path(data["root"])
        scan = scan_class_folders(root / data.get("train_dir", "train"), "train", class_folders, pattern)
        holdout = root / data.get("holdout_dir", "validation")
        if holdout.is_dir():
            scan = scan + scan_class_folders(holdout, "holdout", class_folders, pattern)
    if data.get("test_dir"):
        scan = scan + scan_unlabeled(data["test_dir"], "test", pattern)
    return scan
