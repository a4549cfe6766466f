from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from fundus_tl.cache import CachedImages, build_shard, read_index, skipped_files
from fundus_tl.imaging import (
    UnreadableImage,
    _jpeg_frame_size,
    crop_to_fundus,
    decode,
    prepare,
    quick_check,
    reduction_factor,
)

from .conftest import fundus_like


def test_reduction_factor_keeps_the_target_covered():
    assert reduction_factor(3888, 2592, 299) == 8
    assert reduction_factor(3888, 2592, 512) == 4
    assert reduction_factor(640, 480, 299) == 1
    assert reduction_factor(1300, 1000, 299) == 2


def test_decode_converts_gray_alpha_and_16_bit_to_rgb8(tmp_path: Path):
    gray = np.full((40, 50), 200, np.uint8)
    bgra = np.zeros((40, 50, 4), np.uint8)
    bgra[..., 2], bgra[..., 3] = 255, 128
    deep = np.full((40, 50, 3), 65535 // 2, np.uint16)
    for name, array in (("g.png", gray), ("a.png", bgra), ("d.tiff", deep)):
        cv2.imwrite(str(tmp_path / name), array)
    rgb_gray = decode((tmp_path / "g.png").read_bytes(), 32)
    rgb_alpha = decode((tmp_path / "a.png").read_bytes(), 32)
    rgb_deep = decode((tmp_path / "d.tiff").read_bytes(), 32)
    assert rgb_gray.shape == (40, 50, 3) and rgb_gray.dtype == np.uint8 and rgb_gray[0, 0].tolist() == [200] * 3
    assert rgb_alpha[0, 0].tolist() == [255, 0, 0]  # red stays red: RGB order
    assert rgb_deep[0, 0].tolist() == [127, 127, 127] or rgb_deep[0, 0].tolist() == [128, 128, 128]


def test_float_tiff_that_only_opencv_reads_is_decoded(tmp_path: Path):
    rgb = np.random.default_rng(2).integers(0, 256, (30, 40, 3), np.uint8)
    rgb[0, 0], rgb[0, 1] = 0, 255  # the full range, which the float scaling maps back to 0..255
    cv2.imwrite(str(tmp_path / "f32.tiff"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.float32) / 255)
    decoded = decode((tmp_path / "f32.tiff").read_bytes(), 32)
    assert decoded.dtype == np.uint8 and np.abs(decoded.astype(int) - rgb).max() <= 1


def test_quick_check_gives_the_reason_decode_gives(tmp_path: Path):
    image = fundus_like(2, 3)
    for extension in ("jpeg", "png", "tiff", "bmp", "webp", "gif", "jp2", "ppm"):
        cv2.imwrite(str(tmp_path / f"good.{extension}"), image)
    jpeg, png = (tmp_path / "good.jpeg").read_bytes(), (tmp_path / "good.png").read_bytes()
    (tmp_path / "empty.jpg").touch()
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "cut in the scan.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "cut in the header.jpg").write_bytes(jpeg[:200])
    (tmp_path / "half.png").write_bytes(png[: len(png) // 2])
    reasons = {}
    for path in sorted(tmp_path.iterdir()):
        try:
            decode(path.read_bytes(), 32)
            reasons[path.name] = None
        except UnreadableImage as error:
            reasons[path.name] = str(error)
        assert quick_check(path) == reasons[path.name], path.name
    assert all(reasons[name] is None for name in reasons if name.startswith("good."))
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["notes.jpg"].startswith("not a readable image")
    assert reasons["cut in the scan.jpg"].startswith("truncated JPEG")
    assert reasons["cut in the header.jpg"].startswith("JPEG data could not be decoded")
    assert reasons["half.png"].startswith("truncated or corrupt PNG")
    assert quick_check(tmp_path / "missing.jpg").startswith("cannot read file")


def test_jpeg_frame_size_agrees_with_pillow(tmp_path: Path):
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8))
    variants = {"baseline": {}, "progressive": {"progressive": True}, "4:4:4": {"subsampling": 0}}
    variants["exif and a large ICC profile"] = {"exif": image.getexif().tobytes(), "icc_profile": b"x" * 70000}
    for name, options in variants.items():
        image.save(tmp_path / "a.jpeg", "JPEG", **options)
        assert _jpeg_frame_size((tmp_path / "a.jpeg").read_bytes()) == (53, 37), name
    data = (tmp_path / "a.jpeg").read_bytes()
    assert _jpeg_frame_size(data[:2] + b"\xff" + data[2:]) == (53, 37)  # a fill byte before a marker
    image.save(tmp_path / "a.png")
    for other in ((tmp_path / "a.png").read_bytes(), data[:100], b""):
        assert _jpeg_frame_size(other) is None


def test_area_resize_matches_opencv_uint8():
    rgb = np.random.default_rng(1).integers(0, 256, (324, 486, 3), np.uint8)
    expected = cv2.resize(rgb, (299, 299), interpolation=cv2.INTER_AREA)
    assert np.abs(prepare(rgb, 299, "none").astype(int) - expected).max() <= 1


def test_crop_to_fundus_removes_black_borders():
    image = cv2.cvtColor(fundus_like(0, 0, width=200, height=120), cv2.COLOR_BGR2RGB)
    cropped = crop_to_fundus(image)
    assert cropped.shape[0] == cropped.shape[1]
    assert abs(cropped.shape[0] - 116) <= 3


def test_shard_caches_good_images_and_reports_bad_ones(tmp_path: Path):
    good = tmp_path / "a good one.jpeg"
    cv2.imwrite(str(good), fundus_like(2, 1))
    empty = tmp_path / "empty.jpeg"
    empty.touch()
    text = tmp_path / "text.jpeg"
    text.write_text("not an image")
    truncated = tmp_path / "cut.jpeg"
    truncated.write_bytes(good.read_bytes()[:200])
    items = pd.DataFrame(
        {
            "key": [f"train/{p.name}" for p in (good, empty, text, truncated)],
            "path": [str(p) for p in (good, empty, text, truncated)],
        }
    )
    index = build_shard(items, tmp_path / "c/shard-000.npy", tmp_path / "c/shard-000.tsv", 48, "none", threads=2)
    assert read_index(tmp_path / "c/shard-000.tsv").equals(index)
    status = dict(zip(index["key"], index["status"], strict=True))
    assert status == {
        "train/a good one.jpeg": "ok",
        "train/empty.jpeg": "skipped",
        "train/text.jpeg": "skipped",
        "train/cut.jpeg": "skipped",
    }
    reasons = dict(zip(index["key"], index["reason"], strict=True))
    assert "empty" in reasons["train/empty.jpeg"]
    assert "not a readable image" in reasons["train/text.jpeg"]
    assert not list((tmp_path / "c").glob(".*tmp*"))
    rows = np.load(tmp_path / "c/shard-000.npy")
    assert rows.shape == (4, 48, 48, 3) and rows[index["status"] == "skipped"].max() == 0

    images = CachedImages([tmp_path / "c/shard-000.npy"])
    batch = images.get(["train/a good one.jpeg"])
    assert batch.shape == (1, 48, 48, 3) and batch.dtype == np.uint8
    expected = cv2.resize(
        cv2.cvtColor(cv2.imread(str(good)), cv2.COLOR_BGR2RGB), (48, 48), interpolation=cv2.INTER_AREA
    )
    # Reduced-scale JPEG decode differs from a full decode by a little at sharp edges only.
    assert np.abs(batch[0].astype(int) - expected).mean() < 2

    report = skipped_files(
        [(str(tmp_path / ".DS_Store"), "hidden file")], [tmp_path / "c/shard-000.tsv"], tmp_path / "skipped.tsv"
    )
    assert len(report) == 4
    assert set(report["stage"]) == {"scan", "decode"}


def test_messy_files_are_reported_and_odd_images_converted(tmp_path: Path):
    from PIL import Image

    good = fundus_like(1, 7, width=120, height=90)
    cv2.imwrite(str(tmp_path / "ok ü 10_left.jpeg"), good)
    data = (tmp_path / "ok ü 10_left.jpeg").read_bytes()
    (tmp_path / "cut at 80 %.jpeg").write_bytes(data[: int(len(data) * 0.8)])
    Image.new("RGB", (30, 20)).save(tmp_path / "anim.gif")
    (tmp_path / "gif named jpeg.jpeg").write_bytes((tmp_path / "anim.gif").read_bytes())
    (tmp_path / "pdf.jpeg").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    marked = np.zeros((60, 100, 3), np.uint8)
    marked[:10, :20] = 255  # a white block top-left; EXIF 6 (rotate 90 cw) moves it top-right
    for name, kind in (("exif.jpeg", "JPEG"), ("exif.png", "PNG")):
        image = Image.fromarray(marked)
        exif = image.getexif()
        exif[0x0112] = 6
        image.save(tmp_path / name, kind, exif=exif.tobytes())
    paths = sorted(p for p in tmp_path.iterdir() if p.suffix != ".gif")
    items = pd.DataFrame({"key": [p.name for p in paths], "path": [str(p) for p in paths]})
    index = build_shard(items, tmp_path / "c/s.npy", tmp_path / "c/s.tsv", 40, "none")
    reasons = dict(zip(index["key"], index["reason"], strict=True))
    assert reasons["ok ü 10_left.jpeg"] == ""
    assert reasons["cut at 80 %.jpeg"].startswith("truncated JPEG")
    assert reasons["gif named jpeg.jpeg"] == ""  # readable whatever its extension says
    assert "not a readable image" in reasons["pdf.jpeg"]
    images = CachedImages([tmp_path / "c/s.npy"])
    for name in ("exif.jpeg", "exif.png"):
        upright = images.get([name])[0]
        assert upright[:6, -6:].mean() > 200 and upright[:6, :6].mean() < 50, name


def test_identical_files_across_train_and_holdout_are_reported(tmp_path: Path):
    cv2.imwrite(str(tmp_path / "a.jpeg"), fundus_like(0, 1))
    (tmp_path / "copy.jpeg").write_bytes((tmp_path / "a.jpeg").read_bytes())
    cv2.imwrite(str(tmp_path / "b.jpeg"), fundus_like(0, 2))
    build_shard(
        pd.DataFrame(
            {"key": ["train/a.jpeg", "train/b.jpeg"], "path": [str(tmp_path / "a.jpeg"), str(tmp_path / "b.jpeg")]}
        ),
        tmp_path / "t.npy",
        tmp_path / "t.tsv",
        32,
        "none",
    )
    build_shard(
        pd.DataFrame({"key": ["holdout/copy.jpeg"], "path": [str(tmp_path / "copy.jpeg")]}),
        tmp_path / "h.npy",
        tmp_path / "h.tsv",
        32,
        "none",
    )
    from fundus_tl.cache import cross_split_duplicates

    report = cross_split_duplicates([tmp_path / "t.tsv", tmp_path / "h.tsv"], tmp_path / "dup.tsv")
    assert len(report) == 1
    assert {Path(report.iloc[0]["path"]).name, Path(report.iloc[0]["same_as"]).name} == {"a.jpeg", "copy.jpeg"}


def test_graham_draws_no_band_where_the_photograph_cuts_the_disc():
    """EyePACS frames often clip the disc top and bottom; the padding beyond the cut must not leak in."""
    frame = np.zeros((200, 320, 3), np.uint8)
    cv2.circle(frame, (160, 100), 140, (150, 80, 40), thickness=-1)  # a flat disc, cut by the frame
    out = prepare(frame, 128, "graham")
    shown = out.max(axis=2) > 0
    assert shown[64, 64] and not shown[5, 64]  # the centre is kept, the padding above the cut is not
    assert np.abs(out[shown].astype(int) - 128).max() <= 8  # a flat disc stays flat grey, even at the cut
    whole = np.zeros((320, 320, 3), np.uint8)
    cv2.circle(whole, (160, 160), 140, (150, 80, 40), thickness=-1)
    assert (prepare(whole, 128, "graham").max(axis=2) > 0).sum() > shown.sum()  # an uncut disc keeps more
