"""Deterministic synthetic fundus photographs graded 0-4 for demos and tests.

The real EyePACS / Kaggle images cannot be shipped, so the demo workflow and
the tests train on pictures drawn here instead. They imitate what a grader
looks at (international DR scale) closely enough for a CNN to learn the
grades, while random lesion counts let neighbouring grades overlap, so the
task is learnable but not trivial. Files are laid out like the original Keras
scripts expect: ``<out_dir>/{train,validation}/class<k>/<patient>_<eye>.jpeg``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .dataset import IMAGE_COLUMNS, UNKNOWN_STAT, Scan

GRADES = 5
"""Number of grades on the international diabetic retinopathy scale."""

SPLITS = ("train", "validation", "test")

# Mean lesion counts per grade: microaneurysms, dot/blot haemorrhages, large
# blotch haemorrhages, flame haemorrhages, hard-exudate clusters, cotton-wool
# spots, extra neovascular tufts (grade 4 always has at least one tuft).
_LESION_MEANS = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [8.0, 3.0, 0.0, 0.5, 1.2, 0.4, 0.0],
        [12.0, 9.0, 3.0, 2.0, 2.5, 2.5, 0.0],
        [12.0, 9.0, 4.0, 2.0, 2.5, 3.0, 1.0],
    ]
)
_BEADING_PROBABILITY = (0.0, 0.0, 0.0, 0.7, 0.8)
_PRERETINAL_PROBABILITY = (0.0, 0.0, 0.0, 0.0, 0.4)

# BGR colours in [0, 1] before exposure, tint and vignetting are applied.
_RETINA = np.array([0.13, 0.30, 0.80], np.float32)
_OPTIC_DISC = np.array([0.55, 0.80, 0.97], np.float32)
_OPTIC_CUP = np.array([0.78, 0.92, 1.00], np.float32)
_VEIN = np.array([0.05, 0.06, 0.36], np.float32)
_ARTERY = np.array([0.08, 0.12, 0.52], np.float32)
_HAEMORRHAGE = np.array([0.05, 0.05, 0.38], np.float32)
_NEW_VESSEL = np.array([0.09, 0.10, 0.55], np.float32)
_EXUDATE = np.array([0.30, 0.86, 0.96], np.float32)
_COTTON_WOOL = np.array([0.74, 0.86, 0.92], np.float32)

_SHIFT = 4  # cv2 fixed-point bits, so that drawing positions are sub-pixel
_SCALE = 1 << _SHIFT
# Pairing of eyes: probability that a patient has both eyes in the split and
# relative weights of the other eye having the same grade or one apart.
_BOTH_EYES = 0.8
_SAME_GRADE_WEIGHT = 6.0


class _Canvas:
    """Geometry of one image: the fundus disc and its landmarks, in pixels."""

    def __init__(self, size: tuple[int, int], rng: np.random.Generator) -> None:
        self.height, self.width = size
        self.radius = self.height * rng.uniform(0.44, 0.53)  # > 0.5: clipped
        self.cx = self.width / 2 + rng.normal(0.0, 0.01) * self.width
        self.cy = self.height / 2 + rng.normal(0.0, 0.01) * self.height
        r = self.radius
        # Right-eye convention: the optic disc lies right of the macula.
        self.od = (self.cx + rng.uniform(0.36, 0.46) * r, self.cy + rng.normal(0.0, 0.04) * r)
        self.od_radius = r * rng.uniform(0.11, 0.14)
        self.macula = (self.cx - rng.uniform(0.04, 0.14) * r, self.od[1] + rng.uniform(0.0, 0.06) * r)
        ys, xs = np.ogrid[: self.height, : self.width]
        self.xs = xs.astype(np.float32)
        self.ys = ys.astype(np.float32)
        self.dist = np.sqrt((self.xs - self.cx) ** 2 + (self.ys - self.cy) ** 2) / r

    def mask(self) -> np.ndarray:
        """Return an empty single-channel float layer to draw into."""
        return np.zeros((self.height, self.width), np.float32)

    def gaussian(self, centre: tuple[float, float], sigma: float) -> np.ndarray:
        """Return an unnormalised 2-D Gaussian bump (peak 1) around `centre`."""
        gx = np.exp(-((self.xs - centre[0]) ** 2) / (2 * sigma**2))
        gy = np.exp(-((self.ys - centre[1]) ** 2) / (2 * sigma**2))
        return gy * gx

    def random_point(self, rng: np.random.Generator, max_radius: float) -> tuple[float, float]:
        """Return a uniformly random point of the posterior pole (within `max_radius` * r)."""
        rho = math.sqrt(rng.random()) * max_radius * self.radius
        phi = rng.uniform(0.0, 2 * math.pi)
        return self.cx + rho * math.cos(phi), self.cy + rho * math.sin(phi)


def _fixed(point: Sequence[float]) -> tuple[int, int]:
    """Convert a float point to cv2 fixed-point coordinates (see `_SHIFT`)."""
    return round(point[0] * _SCALE), round(point[1] * _SCALE)


def _nonzero_box(layer: np.ndarray, pad: int = 0) -> tuple[slice, slice] | None:
    """Return the (rows, cols) slices bounding the non-zero pixels of `layer`, grown by `pad`."""
    rows = np.flatnonzero(layer.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(layer.any(axis=0))
    return (
        slice(max(0, rows[0] - pad), rows[-1] + pad + 1),
        slice(max(0, cols[0] - pad), cols[-1] + pad + 1),
    )


def _blend(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Paint `colour` over the planar (3, H, W) `img` in place with per-pixel opacity `alpha`.

    Only the bounding box of non-zero `alpha` is touched, which keeps sparse
    lesion layers cheap.
    """
    box = _nonzero_box(alpha)
    if box is not None:
        view = img[(slice(None), *box)]
        view += alpha[box] * (colour[:, None, None] - view)


def _soften(layer: np.ndarray, sigma: float) -> None:
    """Gaussian-blur `layer` in place, only around its non-zero pixels, which is far cheaper."""
    box = _nonzero_box(layer, math.ceil(3 * sigma) + 1)
    if box is not None:
        layer[box] = cv2.GaussianBlur(layer[box], (0, 0), sigma)


def _disc(layer: np.ndarray, centre: Sequence[float], radius: float, value: float) -> None:
    """Draw a filled, anti-aliased circle with sub-pixel centre and radius."""
    cv2.circle(layer, _fixed(centre), max(1, round(radius * _SCALE)), value, -1, cv2.LINE_AA, _SHIFT)


def _blob(layer: np.ndarray, rng: np.random.Generator, centre: Sequence[float], radius: float, value: float) -> None:
    """Draw an irregular blot made of a few overlapping ellipses."""
    for _ in range(int(rng.integers(2, 5))):
        offset = rng.normal(0.0, 0.35 * radius, 2)
        axes = radius * rng.uniform(0.55, 0.9, 2)
        cv2.ellipse(
            layer,
            _fixed(np.asarray(centre) + offset),
            (max(1, round(axes[0] * _SCALE)), max(1, round(axes[1] * _SCALE))),
            float(rng.uniform(0.0, 180.0)),
            0.0,
            360.0,
            value,
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )


def _grow_vessel(
    canvas: _Canvas,
    rng: np.random.Generator,
    start: tuple[float, float],
    angle: float,
    width: float,
    length: float,
    curvature: float,
    depth: int,
    out: list[tuple[np.ndarray, np.ndarray, int]],
) -> None:
    """Random-walk one vessel from `start`, tapering and branching recursively.

    Appends (points, widths, depth) per vessel to `out`. `curvature` is in
    radians per fundus radius and fades with distance, so the main arcades
    bend round the macula near the disc and then run on fairly straight.
    """
    r = canvas.radius
    step = 0.025 * r
    n_steps = max(2, int(length / step))
    fade = np.exp(-np.arange(n_steps) * step / (0.9 * r))
    angles = angle + np.cumsum(curvature * step / r * fade + rng.normal(0.0, 0.04, n_steps))
    moves = step * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    pts = np.vstack([start, start + np.cumsum(moves, axis=0)]).astype(np.float32)
    beyond_rim = np.hypot(pts[:, 0] - canvas.cx, pts[:, 1] - canvas.cy) > 1.02 * r
    in_fovea = np.hypot(pts[:, 0] - canvas.macula[0], pts[:, 1] - canvas.macula[1]) < 0.07 * r
    stops = np.flatnonzero(beyond_rim | in_fovea)
    keep = stops[0] + 1 if stops.size else len(pts)
    pts = pts[:keep]
    widths = np.linspace(width, max(0.35 * width, 0.8), n_steps + 1, dtype=np.float32)[:keep]
    out.append((pts, widths, depth))
    if depth >= 2:
        return
    for j in np.flatnonzero(rng.random(keep) < 0.06 - 0.02 * depth):
        if 3 < j < keep - 1:
            _grow_vessel(
                canvas,
                rng,
                (float(pts[j, 0]), float(pts[j, 1])),
                float(angles[j - 1]) + rng.choice((-1.0, 1.0)) * rng.uniform(0.4, 1.0),
                float(widths[j]) * rng.uniform(0.6, 0.8),
                (n_steps - j) * step * rng.uniform(0.4, 0.9),
                rng.normal(0.0, 1.5),
                depth + 1,
                out,
            )


def _draw_polyline(layer: np.ndarray, pts: np.ndarray, widths: np.ndarray, value: float) -> None:
    """Draw a polyline whose thickness follows `widths`, one cv2 call per thickness run."""
    fixed = np.round(pts * _SCALE).astype(np.int32)
    thickness = np.maximum(1, np.round(widths[1:])).astype(int)
    bounds = [0, *(np.flatnonzero(np.diff(thickness)) + 1), len(thickness)]
    for a, b in itertools.pairwise(bounds):
        cv2.polylines(layer, [fixed[a : b + 1]], False, value, int(thickness[a]), cv2.LINE_AA, _SHIFT)


def _vessel_trees(canvas: _Canvas, rng: np.random.Generator) -> tuple[list, list]:
    """Grow veins and arteries from the optic disc; return both lists of vessels."""
    r = canvas.radius
    base_width = r * rng.uniform(0.022, 0.028)
    # (initial direction, curvature): the four temporal arcades curve round
    # the macula (left in the right-eye convention), the nasal ones fan out.
    arcades = [
        (-math.pi / 2 + 0.3, -3.4),
        (math.pi / 2 - 0.3, 3.4),
        (-math.pi / 2 - 0.1, -2.4),
        (math.pi / 2 + 0.1, 2.4),
        (-0.6, 0.4),
        (0.6, -0.4),
        (-0.1, 0.0),
    ]
    veins: list[tuple[np.ndarray, np.ndarray, int]] = []
    arteries: list[tuple[np.ndarray, np.ndarray, int]] = []
    for n, (angle, curvature) in enumerate(arcades):
        for kind, scale, offset in ((veins, 1.0, 0.0), (arteries, 0.75, rng.choice((-0.25, 0.25)))):
            major = n < 4
            _grow_vessel(
                canvas,
                rng,
                canvas.od,
                angle + offset + rng.normal(0.0, 0.08),
                base_width * scale * (1.0 if major else 0.7),
                r * (rng.uniform(1.1, 1.5) if major else rng.uniform(0.5, 0.8)),
                curvature + rng.normal(0.0, 0.3),
                0 if major else 1,
                kind,
            )
    return veins, arteries


def _add_beading(layer: np.ndarray, rng: np.random.Generator, veins: list) -> None:
    """Add sausage-like calibre changes along a stretch of one or two major veins."""
    major = [v for v in veins if v[2] == 0 and len(v[0]) > 12]
    if not major:
        return
    for i in rng.choice(len(major), size=min(len(major), int(rng.integers(1, 3))), replace=False):
        pts, widths, _ = major[i]
        start = int(rng.integers(3, len(pts) - 8))
        stop = min(len(pts), start + int(rng.integers(8, 16)))
        for j in range(start, stop, 2):
            _disc(layer, pts[j], widths[j] * rng.uniform(0.85, 1.15), 1.0)


def _neovascular_tuft(layer: np.ndarray, rng: np.random.Generator, centre: Sequence[float], size: float) -> None:
    """Draw a tuft of fine, tortuous new vessels looping around `centre`.

    Lines are about `size` / 12 thick, so that a tuft stays visible once the
    image is shrunk to the ~160 px the demo trains on.
    """
    thickness = max(1, round(size / 12))
    for _ in range(int(rng.integers(7, 13))):
        angle = rng.uniform(0.0, 2 * math.pi)
        n = int(rng.integers(6, 12))
        turns = np.cumsum(rng.normal(0.5, 0.6, n)) + angle
        steps = size / 6 * np.stack([np.cos(turns), np.sin(turns)], axis=1)
        pts = np.asarray(centre, np.float32) + np.cumsum(steps, axis=0).astype(np.float32)
        cv2.polylines(layer, [np.round(pts * _SCALE).astype(np.int32)], False, 1.0, thickness, cv2.LINE_AA, _SHIFT)


def _draw_lesions(
    canvas: _Canvas, rng: np.random.Generator, grade: int, veins: list, red: np.ndarray, new: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Draw red lesions into `red`/`new`; return (exudate, cotton-wool) opacity layers."""
    r = canvas.radius
    diameter = 2 * r
    n_ma, n_dot, n_blotch, n_flame, n_ex, n_cws, n_nv = rng.poisson(_LESION_MEANS[grade])
    for _ in range(n_ma):
        _disc(red, canvas.random_point(rng, 0.8), diameter * rng.uniform(0.006, 0.010), rng.uniform(0.75, 0.95))
    for _ in range(n_dot):
        _blob(red, rng, canvas.random_point(rng, 0.8), diameter * rng.uniform(0.011, 0.022), rng.uniform(0.7, 0.9))
    for _ in range(n_blotch):
        _blob(red, rng, canvas.random_point(rng, 0.75), diameter * rng.uniform(0.022, 0.045), rng.uniform(0.65, 0.85))
    for _ in range(n_flame):
        x, y = canvas.random_point(rng, 0.6)
        direction = math.degrees(math.atan2(y - canvas.od[1], x - canvas.od[0]))  # along the nerve fibres
        axes = (
            round(diameter * rng.uniform(0.025, 0.04) * _SCALE),
            round(diameter * rng.uniform(0.007, 0.012) * _SCALE),
        )
        cv2.ellipse(red, _fixed((x, y)), axes, direction, 0.0, 360.0, rng.uniform(0.6, 0.8), -1, cv2.LINE_AA, _SHIFT)
    if rng.random() < _PRERETINAL_PROBABILITY[grade]:
        # Boat-shaped: blood settles below a flat fluid level.
        x, y = canvas.random_point(rng, 0.5)
        radius = round(diameter * rng.uniform(0.04, 0.07) * _SCALE)
        cv2.ellipse(red, _fixed((x, y)), (radius, round(radius * 0.9)), 0.0, 0.0, 180.0, 0.92, -1, cv2.LINE_AA, _SHIFT)
    if rng.random() < _BEADING_PROBABILITY[grade]:
        _add_beading(red, rng, veins)
    n_nv += int(grade == GRADES - 1)
    for i in range(n_nv):
        if i == 0 and rng.random() < 0.5:  # new vessels on the disc
            centre = (
                canvas.od[0] + rng.normal(0.0, 0.5) * canvas.od_radius,
                canvas.od[1] + rng.normal(0.0, 0.5) * canvas.od_radius,
            )
        else:  # elsewhere, along a major vessel
            pts = veins[int(rng.integers(len(veins)))][0]
            centre = tuple(pts[int(rng.integers(len(pts)))])
        _neovascular_tuft(new, rng, centre, r * rng.uniform(0.08, 0.14))

    exudate = canvas.mask()
    for _ in range(n_ex):
        # Hard exudates cluster in the posterior pole, often round the macula.
        rho = r * rng.uniform(0.08, 0.45)
        phi = rng.uniform(0.0, 2 * math.pi)
        cx, cy = canvas.macula[0] + rho * math.cos(phi), canvas.macula[1] + rho * math.sin(phi)
        spread = r * rng.uniform(0.04, 0.1)
        for _ in range(int(rng.integers(3, 11))):
            spot = (cx + rng.normal(0.0, spread), cy + rng.normal(0.0, spread))
            _disc(exudate, spot, diameter * rng.uniform(0.005, 0.011), rng.uniform(0.75, 1.0))
    for _ in range(int(rng.poisson(0.6))):
        # Drusen: faint pale dots that also occur without retinopathy.
        _disc(exudate, canvas.random_point(rng, 0.5), diameter * rng.uniform(0.005, 0.009), rng.uniform(0.2, 0.35))

    cotton = canvas.mask()
    for _ in range(n_cws):
        _blob(cotton, rng, canvas.random_point(rng, 0.65), diameter * rng.uniform(0.018, 0.035), rng.uniform(0.6, 0.8))
    _soften(cotton, diameter * 0.008)
    return exudate, cotton


def render_fundus(grade: int, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Return one BGR uint8 image (H, W, 3) of a fundus with lesions typical for `grade` (0..4).

    `size` is (height, width). The optic disc is drawn right of the macula, as
    in a right eye; mirror the image horizontally for a left eye. All
    randomness comes from `rng`, so a seeded generator gives identical pixels.
    """
    if not 0 <= grade < GRADES:
        raise ValueError(f"grade must be in 0..{GRADES - 1}, got {grade}")
    height, width = size
    if height < 16 or width < 16:
        raise ValueError(f"size must be at least 16x16 pixels, got {size}")
    canvas = _Canvas((height, width), rng)
    r = canvas.radius

    # Planar (3, H, W) float image: broadcasting over channels stays fast.
    texture = np.ones((height, width), np.float32)
    for cells, amplitude in ((4, 0.07), (14, 0.03)):
        coarse = rng.normal(0.0, amplitude, (cells, max(2, round(cells * width / height)))).astype(np.float32)
        texture += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    retina = _RETINA * np.exp(rng.normal(0.0, 0.06, 3)).astype(np.float32)
    img = retina[:, None, None] * texture

    # Optic disc with a brighter cup, slightly taller than wide.
    disc = canvas.mask()
    for colour, scale, strength in ((_OPTIC_DISC, 1.0, 0.85), (_OPTIC_CUP, rng.uniform(0.35, 0.55), 0.6)):
        layer = canvas.mask()
        axes = (round(canvas.od_radius * scale * _SCALE), round(canvas.od_radius * scale * 1.1 * _SCALE))
        cv2.ellipse(layer, _fixed(canvas.od), axes, 0.0, 0.0, 360.0, strength, -1, cv2.LINE_AA, _SHIFT)
        _soften(layer, canvas.od_radius * 0.2)
        _blend(img, layer, colour)
        np.maximum(disc, layer, out=disc)

    # Darker macula with a darker fovea.
    darkening = 0.3 * canvas.gaussian(canvas.macula, 0.13 * r) + 0.15 * canvas.gaussian(canvas.macula, 0.03 * r)
    img *= 1.0 - rng.uniform(0.7, 1.1) * darkening

    veins, arteries = _vessel_trees(canvas, rng)
    red = canvas.mask()
    new = canvas.mask()
    exudate, cotton = _draw_lesions(canvas, rng, grade, veins, red, new)
    # The bright disc shines through the vessel trunks that leave it.
    see_through = 1.0 - 0.5 * disc
    for vessels, colour, strength in ((veins, _VEIN, 0.85), (arteries, _ARTERY, 0.75)):
        layer = canvas.mask()
        for pts, widths, _ in vessels:
            _draw_polyline(layer, pts, widths, strength)
        _blend(img, layer * see_through, colour)
    _blend(img, red, _HAEMORRHAGE)
    _blend(img, 0.8 * new, _NEW_VESSEL)
    _blend(img, exudate, _EXUDATE)
    _blend(img, cotton, _COTTON_WOOL)

    # Camera: vignetting, exposure, tint, blur, noise, round aperture, gamma.
    vignette = (1.0 - rng.uniform(0.25, 0.45) * canvas.dist**2) * (1.0 - 0.6 * canvas.dist**10)
    aperture = np.clip((1.0 - canvas.dist) * r + 0.5, 0.0, 1.0)
    img *= np.clip(vignette, 0.0, 1.0)
    img *= (rng.uniform(0.75, 1.25) * np.exp(rng.normal(0.0, 0.05, 3)).astype(np.float32))[:, None, None]
    sigma = rng.uniform(0.5, 1.0)
    for plane in img:
        cv2.GaussianBlur(plane, (0, 0), sigma, dst=plane)
    img += (rng.random(img.shape, np.float32) - 0.5) * rng.uniform(0.02, 0.05)
    img *= aperture * 255.0
    planes = np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8)
    gamma = rng.uniform(0.8, 1.2)
    lut = np.clip((np.arange(256) / 255.0) ** gamma * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    return cv2.LUT(cv2.merge(list(planes)), lut)


def _plan_eyes(
    counts: Sequence[int], rng: np.random.Generator, first_patient: int
) -> tuple[list[tuple[int, str, int]], int]:
    """Group the requested images per class into patients with one or two eyes.

    Returns ((patient, eye, label) per image, next free patient id). Both eyes
    of a patient get the same grade or grades one apart, as in EyePACS.
    """
    remaining = np.asarray(counts, dtype=np.int64).copy()
    offsets = np.array([-1, 0, 1])
    weights = np.array([1.0, _SAME_GRADE_WEIGHT, 1.0])
    plan: list[tuple[int, str, int]] = []
    patient = first_patient
    while remaining.sum() > 0:
        label = int(rng.choice(len(remaining), p=remaining / remaining.sum()))
        remaining[label] -= 1
        labels = [label]
        if rng.random() < _BOTH_EYES:
            partners = label + offsets
            valid = (partners >= 0) & (partners < len(remaining))
            available = np.where(valid, remaining[np.clip(partners, 0, len(remaining) - 1)] > 0, False)
            if available.any():
                partner = int(rng.choice(partners, p=weights * available / (weights * available).sum()))
                remaining[partner] -= 1
                labels.append(partner)
        eyes = ("left", "right") if rng.random() < 0.5 else ("right", "left")
        plan.extend((patient, eye, lab) for eye, lab in zip(eyes, labels, strict=False))
        patient += int(rng.integers(1, 4))  # EyePACS ids have gaps
    return plan, patient


def _write_jpeg_atomic(path: Path, img: np.ndarray, quality: int) -> None:
    """Write `img` as JPEG via a temporary file so readers never see a partial image."""
    ok, encoded = cv2.imencode(".jpeg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"could not encode {path}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(encoded.tobytes())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def plan_demo_dataset(
    train_counts: Sequence[int], validation_counts: Sequence[int], seed: int = 0, test_count: int = 0
) -> pd.DataFrame:
    """Which files the data set will hold, without rendering: split, label, path, patient, index.

    The workflow needs the file list before the images exist (to plan the cache shards), so
    naming is separate from drawing. Test images (``test/*.jpeg``) carry a hidden grade.
    """
    if len(train_counts) != len(validation_counts):
        raise ValueError("train_counts and validation_counts must have one entry per class")
    if not 1 <= len(train_counts) <= GRADES:
        raise ValueError(f"between 1 and {GRADES} classes are supported, got {len(train_counts)}")
    if min(*train_counts, *validation_counts, test_count) < 0:
        raise ValueError("image counts must not be negative")
    rows = []
    patient = 10
    test_counts = np.bincount(
        np.random.default_rng([seed, 2, 2]).integers(0, len(train_counts), test_count), minlength=len(train_counts)
    )
    for split_code, (split, counts) in enumerate(
        zip(SPLITS, (train_counts, validation_counts, test_counts), strict=True)
    ):
        plan, patient = _plan_eyes(counts, np.random.default_rng([seed, split_code, 0]), patient)
        for index, (pid, eye, label) in enumerate(plan):
            folder = "test" if split == "test" else f"{split}/class{label}"
            rows.append((split, label, f"{folder}/{pid}_{eye}.jpeg", str(pid), index))
    return pd.DataFrame(rows, columns=["split", "label", "path", "patient", "index"])


def write_demo_dataset(
    out_dir: str | os.PathLike,
    train_counts: Sequence[int],
    validation_counts: Sequence[int],
    seed: int = 0,
    min_width: int = 320,
    max_width: int = 480,
    jpeg_quality: int = 90,
    test_count: int = 0,
) -> pd.DataFrame:
    """Write the data set; return a table with columns split, label, path (relative to out_dir), patient.

    Class k of ``train_counts``/``validation_counts`` is rendered as grade k,
    so at most five classes are possible. Each image is seeded from
    (seed, split, index), so equal arguments give byte-identical files.
    Patient ids (strings, as parsed from ``<patient>_<eye>.jpeg``) never
    occur in any two splits.
    """
    if not 32 <= min_width <= max_width:
        raise ValueError(f"need 32 <= min_width <= max_width, got {min_width}, {max_width}")
    if not 0 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 0..100, got {jpeg_quality}")
    plan = plan_demo_dataset(train_counts, validation_counts, seed, test_count)
    out = Path(out_dir)
    for split, counts in zip(SPLITS[:2], (train_counts, validation_counts), strict=True):
        for label in range(len(counts)):
            (out / split / f"class{label}").mkdir(parents=True, exist_ok=True)
    for row in plan.itertuples(index=False):
        rng = np.random.default_rng([seed, SPLITS.index(row.split), 1, row.index])
        width = int(rng.integers(min_width, max_width + 1))
        height = round(width / rng.uniform(1.3, 1.5))
        img = render_fundus(row.label, rng, (height, width))
        if row.path.endswith("_left.jpeg"):
            img = np.ascontiguousarray(img[:, ::-1])
        (out / row.path).parent.mkdir(parents=True, exist_ok=True)
        _write_jpeg_atomic(out / row.path, img, jpeg_quality)
    return plan.drop(columns="index")


def demo_scan(root: str | os.PathLike, demo: dict) -> Scan:
    """What a scan of the demo data set will find once it is written (config section ``demo:``)."""
    plan = plan_demo_dataset(
        demo["train_counts"], demo["validation_counts"], demo.get("seed", 0), demo.get("test_count", 0)
    )
    images = pd.DataFrame(
        {
            "key": [
                f"{'holdout' if split == 'validation' else split}/{path.split('/', 1)[1]}"
                for split, path in zip(plan["split"], plan["path"], strict=True)
            ],
            "split": plan["split"].replace({"validation": "holdout"}),
            "path": [str(Path(root) / path) for path in plan["path"]],
            "image": [Path(path).stem for path in plan["path"]],
            "label": np.where(plan["split"] == "test", -1, plan["label"]),
            "patient": plan["patient"],
            "size": UNKNOWN_STAT,
            "mtime_ns": UNKNOWN_STAT,
        }
    )
    return Scan(images[IMAGE_COLUMNS].sort_values("key", ignore_index=True))


def write_demo_scan(root: str | os.PathLike, demo: dict) -> pd.DataFrame:
    """Write the demo data set described by a ``demo:`` config section into `root`."""
    return write_demo_dataset(
        root,
        demo["train_counts"],
        demo["validation_counts"],
        seed=demo.get("seed", 0),
        test_count=demo.get("test_count", 0),
    )
