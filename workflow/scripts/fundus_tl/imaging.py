"""Decode one fundus photograph and bring it to the model's square input size.

Full-size EyePACS JPEGs are 3-5k px wide; decoding them at 1/2, 1/4 or 1/8 scale inside libjpeg
and then area-averaging gives the same pixels for a 299 px target as a full decode, at a fraction
of the cost: on ~1 MB files two to three times less, since entropy decoding is paid in full at any
scale.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

PREPROCESSING = ("none", "crop", "graham")
_EXIF_ORIENTATION = 0x0112
_ORIENT = {  # EXIF orientation -> the operation that shows the image upright
    2: lambda image: cv2.flip(image, 1),
    3: lambda image: cv2.rotate(image, cv2.ROTATE_180),
    4: lambda image: cv2.flip(image, 0),
    5: lambda image: cv2.transpose(image),
    6: lambda image: cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE),
    7: lambda image: cv2.rotate(cv2.transpose(image), cv2.ROTATE_180),
    8: lambda image: cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE),
}
_HEAD_BYTES = 64  # enough for every signature below
_TAIL_BYTES = 4096  # a complete JPEG or PNG ends with its end marker, at most some padding after it
_SIGNATURES = {  # every format this OpenCV build decodes, by the leading bytes its decoder checks
    name: re.compile(pattern, re.DOTALL)
    for name, pattern in {
        "JPEG": rb"\xff\xd8\xff",
        "PNG": rb"\x89PNG\r\n\x1a\n",
        "TIFF": rb"II[*+]\x00|MM\x00[*+]",
        "BMP": rb"BM",
        "WebP": rb"RIFF....WEBP",
        "GIF": rb"GIF8[79]a",
        "AVIF": rb"....ftyp.*avi[fs]",
        "JPEG 2000": rb"\x00\x00\x00\x0cjP  \r\n\x87\n|\xff\x4f\xff\x51",
        "PNM": rb"P[1-7]\s",
        "PFM": rb"P[Ff]\s",
        "Radiance HDR": rb"#\?(?:RADIANCE|RGBE)",
        "Sun raster": rb"\x59\xa6\x6a\x95",
    }.items()
}
_JPEG_END, _JPEG_SCAN = b"\xff\xd9", b"\xff\xda"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: no data, so always the same CRC
EMPTY_FILE = "empty file (0 bytes)"
NOT_AN_IMAGE = "not a readable image (no image format's signature at the start)"
TRUNCATED_JPEG = "truncated JPEG (no end-of-image marker after the last scan)"
JPEG_WITHOUT_DATA = "JPEG data could not be decoded (neither a scan nor an end-of-image marker: cut short or corrupt)"
TRUNCATED_PNG = "truncated or corrupt PNG (no IEND chunk at the end)"
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-SOF15 but DHT, JPG, DAC
REDUCED_FLAGS = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}


class UnreadableImage(Exception):
    """The file is not an image this pipeline can use; the message says why."""


def reduction_factor(width: int, height: int, target: int) -> int:
    """Largest JPEG decode reduction whose output still covers `target` pixels on both sides."""
    for factor in (8, 4, 2):
        if min(width, height) // factor >= target:
            return factor
    return 1


def _to_rgb8(array: np.ndarray) -> np.ndarray:
    """Any decoded array (gray, BGR, BGRA, 16-bit, float) to RGB uint8, scaling not truncating."""
    if array.dtype == np.uint16:
        array = (array.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        array = array.astype(np.float32)
        low, high = float(array.min()), float(array.max())
        array = ((array - low) / max(high - low, 1e-12) * 255).round().astype(np.uint8)
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    if array.shape[2] == 1:
        return cv2.cvtColor(array[:, :, 0], cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def image_format(head: bytes) -> str | None:
    """Name of the format whose signature `head` (the file's first bytes) starts with, if any."""
    return next((name for name, signature in _SIGNATURES.items() if signature.match(head)), None)


def _jpeg_problem(tail: bytes, read_all: Callable[[], bytes]) -> str | None:
    """Why a JPEG is incomplete: no end-of-image marker after its last start-of-scan marker, or neither.

    The tail decides when it holds either marker; only a JPEG cut inside its scan data (or with
    over 4 KB after its end) needs the whole file, which costs about 1 ms per megabyte.
    """
    end, scan = tail.rfind(_JPEG_END), tail.rfind(_JPEG_SCAN)
    if end == scan:  # equal only when neither is there
        data = read_all()
        end, scan = data.rfind(_JPEG_END), data.rfind(_JPEG_SCAN)
    if end == scan:
        return JPEG_WITHOUT_DATA
    return TRUNCATED_JPEG if scan > end else None


def _identify(head: bytes, tail: bytes, read_all: Callable[[], bytes]) -> str:
    """Format of a file from its first 64 bytes; raises `UnreadableImage` when these and its last
    4 KB already show that it cannot be decoded. `decode` and `quick_check` share this, so a file
    left out before training fails decoding for the same reason."""
    if not head:
        raise UnreadableImage(EMPTY_FILE)
    kind = image_format(head)
    if kind is None:
        raise UnreadableImage(NOT_AN_IMAGE)
    if kind == "JPEG" and (problem := _jpeg_problem(tail, read_all)):
        raise UnreadableImage(problem)
    if kind == "PNG" and _PNG_END not in tail:
        raise UnreadableImage(TRUNCATED_PNG)
    return kind


def quick_check(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be decoded, as far as its first 64 bytes and last 4 KB tell, or None.

    Cheap enough to run on every file before the folds are built (no pixel is decoded); a file
    that passes can still fail the full decode, which then drops it as before.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(_HEAD_BYTES)
            file.seek(max(os.fstat(file.fileno()).st_size - _TAIL_BYTES, 0))
            tail = file.read()

            def read_all() -> bytes:
                file.seek(0)
                return file.read()

            _identify(head, tail, read_all)
    except UnreadableImage as error:
        return str(error)
    except OSError as error:
        return f"cannot read file ({error.strerror or error})"
    return None


def _jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking the marker segments; None if not a JPEG.

    Between two decodes Pillow's header parse costs about 0.3 ms; this takes microseconds.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 9 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker in _JPEG_FRAME_MARKERS:
            height, width = struct.unpack_from(">HH", data, position + 5)
            return (width, height) if width and height else None
        position += 1 if marker == 0xFF else 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


def _exif_orientation(data: bytes) -> int:
    """EXIF orientation of a non-JPEG file; 1 when Pillow cannot parse it (a float TIFF OpenCV reads).

    Pillow finds a PNG's EXIF only by decoding the whole image, so a PNG without an EXIF chunk
    (the ``eXIf`` chunk, or the text chunk older tools write) is answered without it.
    """
    if data.startswith(b"\x89PNG") and b"eXIf" not in data and b"Raw profile type exif" not in data:
        return 1
    try:
        with Image.open(io.BytesIO(data)) as header:
            return header.getexif().get(_EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError):
        return 1


def decode(data: bytes, target: int) -> np.ndarray:
    """Decode file bytes to an RGB uint8 array at least `target` px on its short side when possible."""
    kind = _identify(data[:_HEAD_BYTES], data[-_TAIL_BYTES:], lambda: data)
    buffer = np.frombuffer(data, dtype=np.uint8)
    if kind == "JPEG":
        frame = _jpeg_frame_size(data)
        factor = reduction_factor(*frame, target) if frame else 1
        array = cv2.imdecode(buffer, REDUCED_FLAGS.get(factor, cv2.IMREAD_COLOR))  # applies EXIF orientation
    else:
        array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
        if array is not None:
            array = _ORIENT.get(_exif_orientation(data), lambda image: image)(array)
    if array is None or array.size == 0:
        raise UnreadableImage(f"{kind} data could not be decoded (unsupported, truncated or corrupt)")
    return _to_rgb8(array)


def fundus_bounds(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of the bright fundus disc on its dark background."""
    red, green, blue = cv2.split(rgb)
    gray = cv2.max(cv2.max(red, green), blue)  # numpy's max over the channel axis is 20x slower
    threshold = max(10.0, 0.1 * float(np.percentile(gray[::4, ::4], 99)))
    mask = gray > threshold
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return 0, 0, rgb.shape[1], rgb.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def fundus_square(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The disc's bounding box padded with black to a square, and where the photograph lies in it.

    Returns the square and the (x0, y0, x1, y1) box of its image pixels; the rest is padding.
    """
    x0, y0, x1, y1 = fundus_bounds(rgb)
    cropped = rgb[y0:y1, x0:x1]
    height, width = cropped.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    square = cv2.copyMakeBorder(
        cropped, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT, value=0
    )
    return square, (left, top, left + width, top + height)


def crop_to_fundus(rgb: np.ndarray) -> np.ndarray:
    """Crop the black borders and pad to a square centred on the disc, keeping the aspect."""
    return fundus_square(rgb)[0]


def graham(rgb: np.ndarray, content: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Ben Graham's 2015 normalisation on a cropped square: local contrast, outer ring masked.

    Where a photograph cuts the disc (EyePACS frames often clip its top and bottom), the blur
    mixes in the black padding beyond the cut and the contrast step draws a bright band along it;
    given the `content` box of the image pixels, that band (two blur widths) is masked too.
    """
    radius = rgb.shape[0] / 2
    sigma = max(radius / 30, 0.5)
    blurred = cv2.GaussianBlur(rgb, (0, 0), sigmaX=sigma)
    enhanced = cv2.addWeighted(rgb, 4, blurred, -4, 128)
    mask = np.zeros(rgb.shape[:2], np.uint8)
    centre = (rgb.shape[1] // 2, rgb.shape[0] // 2)
    cv2.circle(mask, centre, int(radius * 0.9), 1, thickness=-1)
    if content is not None:
        margin = math.ceil(2 * sigma)
        x0, y0, x1, y1 = content
        height, width = mask.shape
        # A side that touches the square's edge is the disc's own rim: the circle already masks it.
        inside = np.zeros_like(mask)
        inside[
            y0 + (margin if y0 > 0 else 0) : y1 - (margin if y1 < height else 0),
            x0 + (margin if x0 > 0 else 0) : x1 - (margin if x1 < width else 0),
        ] = 1
        mask &= inside
    return enhanced * mask[:, :, None]


def prepare(rgb: np.ndarray, size: int, preprocessing: str) -> np.ndarray:
    """Apply the preprocessing and resize to ``size x size`` with area averaging."""
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"preprocessing '{preprocessing}' is not one of {PREPROCESSING}")
    content = None
    if preprocessing in ("crop", "graham"):
        rgb, box = fundus_square(rgb)
        scale = size / rgb.shape[0]
        content = (
            math.floor(box[0] * scale),
            math.floor(box[1] * scale),
            math.ceil(box[2] * scale),
            math.ceil(box[3] * scale),
        )
    if min(rgb.shape[:2]) >= size:
        # OpenCV's area resampling at fractional ratios is about 1.4x faster on float32 than on
        # uint8, conversions included; rounding back gives the same values within 1 grey level.
        resized = cv2.convertScaleAbs(cv2.resize(rgb.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA))
    else:
        resized = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_CUBIC)
    if preprocessing == "graham":
        resized = graham(resized, content)
    return np.ascontiguousarray(resized)


def load_image(path: str, size: int, preprocessing: str) -> np.ndarray:
    """Read, decode and prepare one file to ``size x size`` RGB uint8; raises `UnreadableImage` with the reason."""
    descriptor = os.open(path, os.O_RDONLY)
    try:  # one read of the known size: about 50 us less per file than a file object's read()
        data = os.read(descriptor, os.fstat(descriptor).st_size)
        while chunk := os.read(descriptor, 1 << 20):  # a network file system may return less, or more
            data += chunk
    finally:
        os.close(descriptor)
    return prepare(decode(data, size), size, preprocessing)
