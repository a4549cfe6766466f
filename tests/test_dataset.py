import os
from pathlib import Path

import pandas as pd
import pytest

from fundus_tl.dataset import (
    NOT_REGULAR,
    patient_of,
    read_inventory,
    scan_dataset,
    scan_labels_csv,
    shard_of,
    write_inventories,
)

from .conftest import CLASSES


def test_patient_of_eyepacs_names_and_fallback():
    assert patient_of("10_left") == "10"
    assert patient_of("10_RIGHT") == "10"
    assert patient_of("img 7") == "img 7"


def test_shard_of_is_stable_and_spread():
    keys = [f"train/class0/{i}_left.jpeg" for i in range(400)]
    shards = [shard_of(key, 8) for key in keys]
    assert shards == [shard_of(key, 8) for key in keys]
    assert set(shards) == set(range(8))


def test_scan_folders_lists_every_unused_file_with_a_reason(folder_dataset: Path):
    train = folder_dataset / "train"
    (train / "class0" / ".DS_Store").write_bytes(b"\0")
    (train / "class1" / "notes.txt").write_text("x")
    (train / "class2" / "nested").mkdir()
    (train / "class2" / "nested" / "9_left.jpeg").write_bytes(b"x")
    (train / "extra").mkdir()
    (train / "extra" / "1_left.jpeg").write_bytes(b"x")
    (train / "class3" / "5_left.jpeg").symlink_to(train / "class3" / "gone.jpeg")
    scan = scan_dataset({"root": str(folder_dataset), "class_folders": CLASSES})
    assert scan.images["split"].value_counts().to_dict() == {"train": 32, "holdout": 10}
    reasons = dict(zip(scan.skipped["path"].map(lambda p: Path(p).name), scan.skipped["reason"], strict=True))
    assert reasons[".DS_Store"] == "hidden file"
    assert "not an image extension" in reasons["notes.txt"]
    assert "sub-folder 'nested'" in reasons["9_left.jpeg"]
    assert "'extra' is not in data.class_folders" in reasons["1_left.jpeg"]
    assert reasons["5_left.jpeg"] == NOT_REGULAR
    first = scan.images.iloc[0]
    assert first["key"].startswith("train/class0/") and first["label"] == 0


def test_csv_layout_gives_the_same_images_and_labels_as_folders(folder_dataset: Path, tmp_path: Path):
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = []
    for path in sorted((folder_dataset / "train").glob("*/*.jpeg")):
        target = flat / path.name.replace(".jpeg", ".JPG")
        target.write_bytes(path.read_bytes())
        rows.append({"image": path.stem, "level": CLASSES.index(path.parent.name)})
    rows.append({"image": "missing_left", "level": 1})
    rows.append({"image": rows[0]["image"], "level": rows[0]["level"]})
    rows.append({"image": rows[1]["image"].replace("_", "x"), "level": 9})
    labels = tmp_path / "trainLabels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    (flat / "unlabelled_left.jpeg").write_bytes((folder_dataset / "train/class0/0_left.jpeg").read_bytes())

    from_csv = scan_labels_csv(flat, labels, 5)
    from_folders = scan_dataset({"root": str(folder_dataset), "class_folders": CLASSES}).images
    from_folders = from_folders[from_folders["split"] == "train"]
    assert sorted(zip(from_csv.images["image"], from_csv.images["label"], strict=True)) == sorted(
        zip(from_folders["image"], from_folders["label"], strict=True)
    )
    reasons = " | ".join(from_csv.skipped["reason"])
    assert "no image file for 'missing_left'" in reasons
    assert "duplicate row" in reasons
    assert "outside 0..4" in reasons
    assert "no label row" in reasons


def test_csv_layout_names_missing_columns(tmp_path: Path):
    labels = tmp_path / "labels.csv"
    labels.write_text("name,grade\na,1\n")
    with pytest.raises(ValueError, match="missing column"):
        scan_labels_csv(tmp_path, labels, 5)


def test_inventories_change_only_for_the_shard_of_a_changed_image(folder_dataset: Path, tmp_path: Path):
    data = {"root": str(folder_dataset), "class_folders": CLASSES}
    folder = tmp_path / "inventory"
    paths = write_inventories(scan_dataset(data).images, folder, 4)
    assert len(paths) == 8  # train and holdout, 4 shards each
    listed = pd.concat([read_inventory(path) for path in paths])
    assert sorted(listed["key"]) == sorted(scan_dataset(data).images["key"])
    assert (listed["size"] > 0).all()
    stamps = {path: Path(path).stat().st_mtime_ns for path in paths}

    write_inventories(scan_dataset(data).images, folder, 4)
    assert {path: Path(path).stat().st_mtime_ns for path in paths} == stamps  # unchanged: not rewritten

    image = sorted((folder_dataset / "train" / "class1").glob("*.jpeg"))[0]
    image.write_bytes(image.read_bytes() + b"\0")
    write_inventories(scan_dataset(data).images, folder, 4)
    changed = [path for path in paths if Path(path).stat().st_mtime_ns != stamps[path]]
    key = f"train/class1/{image.name}"
    assert changed == [str(folder / "train" / f"shard-{shard_of(key, 4):03d}.tsv")]
    assert key in set(read_inventory(changed[0])["key"])


def test_messy_labels_csv_keeps_file_line_numbers_and_explains_every_row(tmp_path: Path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for stem in ("1_left", "2_left", "3_left", "4_left", "5_left", "6_left"):
        (flat / f"{stem}.jpeg").write_bytes(b"\xff\xd8 placeholder")
    labels = tmp_path / "labels.csv"
    lines = ["image,level", "1_left,0", "", "2_left,2.0", "3_left,two", "4_left,1", "4_left,3", "5_left,1", "5_left,1"]
    labels.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")  # BOM and CRLF, as Excel writes

    scan = scan_labels_csv(flat, labels, 5)
    assert dict(zip(scan.images["image"], scan.images["label"], strict=True)) == {"1_left": 0, "2_left": 2, "5_left": 1}
    by_place = dict(zip(scan.skipped["path"].map(lambda p: Path(p).name), scan.skipped["reason"], strict=True))
    assert "'two' of image '3_left' is not a whole number" in by_place["labels.csv line 5"]
    assert "conflicting labels for image '4_left'" in by_place["labels.csv line 6"]
    assert "conflicting labels" in by_place["labels.csv line 7"]
    assert by_place["labels.csv line 9"] == "duplicate row for image '5_left' (same label as line 8)"
    assert by_place["3_left.jpeg"].startswith("not used: its label in labels.csv line 5")
    assert by_place["4_left.jpeg"].startswith("not used: its label rows in labels.csv disagree")
    assert by_place["6_left.jpeg"] == "no label row in labels.csv"
    assert len(scan.skipped) == len(by_place)  # every file and row once


def test_a_labels_csv_that_is_not_utf8_names_the_file_and_the_fix(tmp_path: Path):
    labels = tmp_path / "labels.csv"
    labels.write_bytes("image,level\nPatiënt_left,0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"labels\.csv: not UTF-8 text .*Save it as UTF-8"):
        scan_labels_csv(tmp_path, labels, 5)


def test_names_that_cannot_enter_the_tables_are_skipped_and_reported(folder_dataset: Path, tmp_path: Path):
    class1 = folder_dataset / "train" / "class1"
    jpeg = next(class1.glob("*.jpeg")).read_bytes()
    for name in (b"Pati\xebnt_left.jpeg", b"tab\tname.jpeg", b"new\nline.jpeg"):  # Latin-1 bytes from an old zip
        Path(os.fsdecode(os.fsencode(class1) + b"/" + name)).write_bytes(jpeg)
    scan = scan_dataset({"root": str(folder_dataset), "class_folders": CLASSES})
    assert scan.images["split"].value_counts().to_dict() == {"train": 32, "holdout": 10}
    reasons = dict(zip(scan.skipped["path"].map(lambda p: Path(p).name), scan.skipped["reason"], strict=True))
    assert "not valid UTF-8" in reasons["Pati\\xebnt_left.jpeg"]
    assert "tab or line break" in reasons["tab\tname.jpeg"]
    assert "tab or line break" in reasons["new\nline.jpeg"]
    report = tmp_path / "skipped.tsv"
    scan.skipped.to_csv(report, sep="\t", index=False)  # what the skip report does: must not fail
    assert len(pd.read_csv(report, sep="\t")) == 3
    write_inventories(scan.images, tmp_path / "inventory", 2)


def test_a_class_folder_linked_from_elsewhere_is_scanned_and_a_link_cycle_ends(folder_dataset: Path, tmp_path: Path):
    train = folder_dataset / "train"
    elsewhere = tmp_path / "elsewhere" / "class4"
    elsewhere.parent.mkdir()
    (train / "class4").rename(elsewhere)
    (train / "class4").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(elsewhere, target_is_directory=True)
    scan = scan_dataset({"root": str(folder_dataset), "class_folders": CLASSES})
    train_images = scan.images[scan.images["split"] == "train"]
    assert (train_images["label"] == 4).sum() == len(list(elsewhere.glob("*.jpeg"))) > 0
    assert not scan.skipped["reason"].str.contains("not in data.class_folders").any()


def test_unmatched_names_in_two_class_folders_are_two_patients(tmp_path: Path):
    jpeg = b"\xff\xd8 placeholder"
    for grade in (0, 2):
        (tmp_path / "train" / CLASSES[grade]).mkdir(parents=True)
        (tmp_path / "train" / CLASSES[grade] / "1.jpg").write_bytes(jpeg)
        (tmp_path / "train" / CLASSES[grade] / "7_left.jpg").write_bytes(jpeg)
    images = scan_dataset({"root": str(tmp_path), "class_folders": CLASSES}).images
    assert sorted(images["patient"]) == ["7", "7", "class0/1", "class2/1"]
