"""Decode one fundus photograph and bring it to the model's square input size.

Full-size EyePACS JPEGs are 3-5k px wide; decoding them at 1/2, 1/4 or 1/8 scale inside libjpeg
and then area-averaging gives the same pixels for a 299 px target as a full decode, at a fraction
of the cost: on ~1 MB files two to three times less, since entropy decoding is paid in full at any
scale.
"""

from __future__ import annotations

import io
import os
import struct

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
_JPEG_TAIL_BYTES = 4096
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


def _is_truncated_jpeg(data: bytes) -> bool:
    """True when no end-of-image marker follows the last start-of-scan marker.

    A complete file ends with the marker (at most some padding after it), so the tail is
    searched first; scanning the whole megabyte backwards costs about 1 ms per file.
    """
    tail = max(len(data) - _JPEG_TAIL_BYTES, 0)
    if data.rfind(b"\xff\xd9", tail) > data.rfind(b"\xff\xda", tail):
        return False
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


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


def _header(data: bytes) -> tuple[int, int, str | None, int]:
    """Width, height, format and EXIF orientation (1 for JPEG: OpenCV applies it while decoding)."""
    frame = _jpeg_frame_size(data)
    if frame is not None:
        return *frame, "JPEG", 1
    try:
        with Image.open(io.BytesIO(data)) as header:
            return header.width, header.height, header.format, header.getexif().get(_EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError) as error:
        raise UnreadableImage(f"not a readable image ({error.__class__.__name__})") from None


def decode(data: bytes, target: int) -> np.ndarray:
    """Decode file bytes to an RGB uint8 array at least `target` px on its short side when possible."""
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    width, height, kind, orientation = _header(data)
    buffer = np.frombuffer(data, dtype=np.uint8)
    if kind == "JPEG":
        if _is_truncated_jpeg(data):
            raise UnreadableImage("truncated JPEG (no end-of-image marker after the last scan)")
        factor = reduction_factor(width, height, target)
        array = cv2.imdecode(buffer, REDUCED_FLAGS.get(factor, cv2.IMREAD_COLOR))  # applies EXIF orientation
    else:
        array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
        if array is not None:
            array = _ORIENT.get(orientation, lambda image: image)(array)
    if array is None or array.size == 0:
        raise UnreadableImage(f"{kind or 'image'} data could not be decoded (unsupported, truncated or corrupt)")
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


def crop_to_fundus(rgb: np.ndarray) -> np.ndarray:
    """Crop the black borders and pad to a square centred on the disc, keeping the aspect."""
    x0, y0, x1, y1 = fundus_bounds(rgb)
    cropped = rgb[y0:y1, x0:x1]
    height, width = cropped.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return cv2.copyMakeBorder(
        cropped, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT, value=0
    )


def graham(rgb: np.ndarray) -> np.ndarray:
    """Ben Graham's 2015 normalisation on a cropped square: local contrast, outer ring masked."""
    radius = rgb.shape[0] / 2
    blurred = cv2.GaussianBlur(rgb, (0, 0), sigmaX=max(radius / 30, 0.5))
    enhanced = cv2.addWeighted(rgb, 4, blurred, -4, 128)
    mask = np.zeros(rgb.shape[:2], np.uint8)
    centre = (rgb.shape[1] // 2, rgb.shape[0] // 2)
    cv2.circle(mask, centre, int(radius * 0.9), 1, thickness=-1)
    return enhanced * mask[:, :, None]


def prepare(rgb: np.ndarray, size: int, preprocessing: str) -> np.ndarray:
    """Apply the preprocessing and resize to ``size x size`` with area averaging."""
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"preprocessing '{preprocessing}' is not one of {PREPROCESSING}")
    if preprocessing in ("crop", "graham"):
        rgb = crop_to_fundus(rgb)
    if min(rgb.shape[:2]) >= size:
        # OpenCV's area resampling at fractional ratios is about 1.4x faster on float32 than on
        # uint8, conversions included; rounding back gives the same values within 1 grey level.
        resized = cv2.convertScaleAbs(cv2.resize(rgb.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA))
    else:
        resized = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_CUBIC)
    if preprocessing == "graham":
        resized = graham(resized)
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
