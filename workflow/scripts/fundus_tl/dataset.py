"""Find the images of a data set and their labels without decoding anything.

The scan is cheap (directory listings, one stat per file and one CSV) so it can run when
Snakemake parses the workflow: its result is written as one small inventory per cache shard,
which is what the shard depends on. Every file found is either an image candidate or listed
with the reason it is not used.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from .io import write_text_if_changed

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp")
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
DEFAULT_PATIENT_PATTERN = r"^(?P<patient>.+)_(?:left|right)$"

IMAGE_COLUMNS = ["key", "split", "path", "image", "label", "patient", "size", "mtime_ns"]
SKIP_COLUMNS = ["path", "reason"]
INVENTORY_COLUMNS = ["key", "path", "size", "mtime_ns"]
UNKNOWN_STAT = -1  # size and mtime of a file that is planned but not written yet (the demo images)
NOT_REGULAR = "not a regular file (a broken link, a link to a folder, or a device)"


class FoundFile(NamedTuple):
    """A directory entry the scan found; `relative` is its POSIX path below the scanned folder."""

    path: str
    relative: str
    size: int
    mtime_ns: int
    regular: bool


@dataclass
class Scan:
    """Image candidates (one row per file, keyed ``split/relative path``) and skipped files."""

    images: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=IMAGE_COLUMNS))
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SKIP_COLUMNS))

    def __add__(self, other: Scan) -> Scan:
        return Scan(_concat(self.images, other.images), _concat(self.skipped, other.skipped))


def _concat(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Both tables one after the other (an empty one adds nothing, not even its column dtypes)."""
    parts = [frame for frame in (first, second) if len(frame)]
    return pd.concat(parts, ignore_index=True) if parts else first


def patient_regex(pattern: str = DEFAULT_PATIENT_PATTERN) -> re.Pattern:
    """The compiled `data.patient_pattern` (config.check_data has made sure it names ``patient``)."""
    return re.compile(pattern, flags=re.IGNORECASE)


def patient_of(image: str, pattern: str = DEFAULT_PATIENT_PATTERN) -> str:
    """Patient id from an image name such as ``10_left``; an unmatched name is its own group."""
    match = patient_regex(pattern).match(image)
    return (match["patient"] or image) if match else image


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


def _walk_files(folder: str | os.PathLike, prefix: str = "", visited: set | None = None) -> list[FoundFile]:
    """Every entry below `folder` other than folders, sorted by relative path, with size and mtime.

    `os.scandir` gives names and types from one system call per folder; one `stat` per file follows
    links, so a link to an image counts as that image and a link to a folder (a class folder kept
    elsewhere) as that folder. A folder reached a second time (a link cycle) is not walked again.
    """
    visited = set() if visited is None else visited
    identity = os.stat(folder)
    visited.add((identity.st_dev, identity.st_ino))
    found = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda entry: entry.name):
            relative = f"{prefix}{entry.name}"
            try:
                is_folder = entry.is_dir()
                stat = entry.stat()
            except OSError:  # a broken link
                found.append(FoundFile(entry.path, relative, UNKNOWN_STAT, UNKNOWN_STAT, False))
                continue
            if is_folder:
                if (stat.st_dev, stat.st_ino) not in visited:
                    found.extend(_walk_files(entry.path, f"{relative}/", visited))
                continue
            found.append(FoundFile(entry.path, relative, stat.st_size, stat.st_mtime_ns, entry.is_file()))
    return found


def printable(path: str) -> str:
    """`path` as text that can be written to a UTF-8 report: undecodable bytes become \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _name_problem(relative: str) -> str | None:
    """Why a file name cannot travel through the workflow's UTF-8, tab-separated tables, if it cannot."""
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return "file or folder name is not valid UTF-8 (an archive made with another encoding?); rename it"
    if any(character in relative for character in "\t\n\r"):
        return "file or folder name contains a tab or line break; rename it"
    return None


def _image_row(split: str, file: FoundFile, label: int, patient: re.Pattern) -> tuple:
    """One IMAGE_COLUMNS row. A name the patient pattern does not match is its own group, keyed by
    its relative path: ``class0/1.jpg`` and ``class2/1.jpg`` are different people."""
    image = os.path.splitext(file.relative.rsplit("/", 1)[-1])[0]
    match = patient.match(image)
    return (
        f"{split}/{file.relative}",
        split,
        file.path,
        image,
        label,
        (match["patient"] or image) if match else os.path.splitext(file.relative)[0],
        file.size,
        file.mtime_ns,
    )


def _images_frame(rows: list[tuple]) -> pd.DataFrame:
    images = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    return images.astype({"label": int, "size": "int64", "mtime_ns": "int64"})


def scan_class_folders(
    split_root: str | os.PathLike,
    split: str,
    class_folders: list[str],
    patient_pattern: str = DEFAULT_PATIENT_PATTERN,
) -> Scan:
    """Scan ``split_root/<class_folder>/*``; the position in `class_folders` is the grade."""
    labels = {name: label for label, name in enumerate(class_folders)}
    patient = patient_regex(patient_pattern)
    rows, skipped = [], []
    for file in _walk_files(split_root):
        parts = file.relative.split("/")
        if reason := _name_problem(file.relative):
            skipped.append((printable(file.path), reason))
        elif len(parts) == 1:
            skipped.append((file.path, "file outside the class folders"))
        elif parts[0] not in labels:
            skipped.append((file.path, f"folder '{parts[0]}' is not in data.class_folders"))
        elif len(parts) > 2:
            skipped.append((file.path, f"in sub-folder '{parts[-2]}' of a class folder"))
        elif not file.regular:
            skipped.append((file.path, NOT_REGULAR))
        elif reason := _non_image_reason(parts[1]):
            skipped.append((file.path, reason))
        else:
            rows.append(_image_row(split, file, labels[parts[0]], patient))
    images = _images_frame(rows).sort_values("label", kind="stable", ignore_index=True)
    return Scan(images, pd.DataFrame(skipped, columns=SKIP_COLUMNS))


def scan_unlabeled(
    folder: str | os.PathLike, split: str = "test", patient_pattern: str = DEFAULT_PATIENT_PATTERN
) -> Scan:
    """Scan a folder of images without labels (label -1), including its sub-folders."""
    patient = patient_regex(patient_pattern)
    rows, skipped = [], []
    for file in _walk_files(folder):
        if reason := _name_problem(file.relative):
            skipped.append((printable(file.path), reason))
        elif not file.regular:
            skipped.append((file.path, NOT_REGULAR))
        elif reason := _non_image_reason(file.relative.rsplit("/", 1)[-1]):
            skipped.append((file.path, reason))
        else:
            rows.append(_image_row(split, file, -1, patient))
    return Scan(_images_frame(rows), pd.DataFrame(skipped, columns=SKIP_COLUMNS))


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
    table = read_labels_table(labels_csv)
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
    rows_of: dict[str, list[tuple[int, str]]] = {}
    for row, (name, level) in enumerate(zip(table[image_column], table[label_column], strict=True)):
        if not name.strip() and not level.strip():
            continue  # a blank line
        stem = Path(name.strip()).stem if Path(name.strip()).suffix.lower() in IMAGE_EXTENSIONS else name.strip()
        rows_of.setdefault(stem, []).append((row + 2, level.strip()))  # line 1 is the header

    labels: dict[str, int] = {}
    row_problem: dict[str, str] = {}  # images whose label rows cannot be used, and why
    for stem, rows in rows_of.items():
        (line, level), duplicates = rows[0], rows[1:]
        where = f"{labels_csv} line {line}"
        levels = {other for _, other in rows}
        if len(levels) > 1:
            lines = ", ".join(f"line {other_line}: {other!r}" for other_line, other in rows)
            for other_line, _ in rows:
                skipped.append((f"{labels_csv} line {other_line}", f"conflicting labels for image '{stem}' ({lines})"))
            row_problem[stem] = f"its label rows in {labels_csv.name} disagree ({lines})"
            continue
        skipped.extend(
            (f"{labels_csv} line {other_line}", f"duplicate row for image '{stem}' (same label as line {line})")
            for other_line, _ in duplicates
        )
        grade = _whole_number(level)
        if grade is None:
            skipped.append((where, f"label '{level}' of image '{stem}' is not a whole number"))
            row_problem[stem] = f"its label in {labels_csv.name} line {line} is not a whole number"
        elif not 0 <= grade < n_classes:
            skipped.append((where, f"label {grade} of image '{stem}' is outside 0..{n_classes - 1}"))
            row_problem[stem] = f"its label in {labels_csv.name} line {line} is outside 0..{n_classes - 1}"
        elif stem not in by_stem:
            skipped.append((where, f"no image file for '{stem}' in {images_dir}"))
        else:
            labels[stem] = grade

    found = unlabeled.images
    usable = []
    for stem, indices in by_stem.items():
        for index in indices:
            if stem in row_problem:
                skipped.append((found.at[index, "path"], f"not used: {row_problem[stem]}"))
            elif stem not in labels:
                skipped.append((found.at[index, "path"], f"no label row in {labels_csv.name}"))
            elif len(indices) > 1:
                skipped.append((found.at[index, "path"], f"several files for image '{stem}'"))
            else:
                usable.append(index)
    images = found.loc[sorted(usable)].reset_index(drop=True)
    images["label"] = images["image"].map(labels).astype(int)
    return Scan(images, pd.DataFrame(skipped, columns=SKIP_COLUMNS))


def read_labels_table(labels_csv: Path) -> pd.DataFrame:
    """The labels CSV as text cells, blank lines kept so that row k is line k + 2 of the file."""
    try:
        return pd.read_csv(labels_csv, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{labels_csv}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}). "
            f"Save it as UTF-8 (Excel: 'CSV UTF-8'; or iconv -f latin1 -t utf-8)."
        ) from None


def _whole_number(text: str) -> int | None:
    """``3`` or ``3.0`` (as spreadsheets write it) -> 3; anything else -> None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


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


def write_inventories(images: pd.DataFrame, folder: str | os.PathLike, n_shards: int) -> list[str]:
    """One small TSV per split and shard: key, path, size and mtime of each image in it.

    The cache jobs and the fold manifest depend on these files instead of on every image, so
    Snakemake plans tens of thousands of images from a few dozen inputs. A file is rewritten only
    when its content changes, so an edited, added or removed image makes exactly one shard stale.
    Returns the paths of every split's shards, written or not.
    """
    paths = []
    lines: dict[tuple[str, int], list[str]] = {}
    for key, split, path, size, mtime_ns in images[["key", "split", *INVENTORY_COLUMNS[1:]]].itertuples(index=False):
        lines.setdefault((split, shard_of(key, n_shards)), []).append(f"{key}\t{path}\t{size}\t{mtime_ns}\n")
    header = "\t".join(INVENTORY_COLUMNS) + "\n"
    for split in sorted(set(images["split"])):
        for shard in range(n_shards):
            path = Path(folder) / split / f"shard-{shard:03d}.tsv"
            write_text_if_changed(path, header + "".join(sorted(lines.get((split, shard), []))))
            paths.append(str(path))
    return paths


def read_inventory(path: str | os.PathLike) -> pd.DataFrame:
    """The images of one shard as `write_inventories` listed them."""
    return pd.read_csv(path, sep="\t", dtype={"key": str, "path": str}, keep_default_na=False)
