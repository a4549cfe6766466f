"""Benchmark the decode-once image cache against the seed scripts' decode path.

The seed Keras scripts decoded every photograph in full (``cv2.imread``) and shrank it with
``cv2.resize`` (bilinear), once per epoch. The workflow instead decodes each file once into a uint8
shard (`fundus_tl.cache.build_shard`): libjpeg decodes at 1/2, 1/4 or 1/8 scale, INTER_AREA does
the rest, a thread pool spreads files over cores and each row is written to the shard file as it
is done. This script measures on EyePACS-size JPEGs how much cheaper that is per core, how it
scales with threads, and whether peak memory grows with the number of images.

What sets the ratio. A reduced-scale decode skips the full decode's inverse DCT, upsampling and
colour conversion and the page faults of its 30 MB output, but it still has to entropy-decode
every coefficient in the file. The ratio therefore follows the bytes per pixel, not what the bytes
depict: on a 3888x2592 frame of 1.0 MB, full vs 1/8-scale decode CPU time came out at 2.0-2.2x
whether the noise was white or smoothed over 0.7-5 px, at quality 85-95, with 4:2:0, 4:2:2 or
4:4:4 chroma, while the same content went from about 2.4x at 0.6 MB to 1.8x at 1.4 MB (2-core AMD
EPYC VM). So the test files are pinned to the mean size of EyePACS files (35,126 training images in
about 35 GB: ~1 MB) and must spend those bytes the way camera files do.

Camera-like corpus (the headline). Synthetic fundus pictures (`fundus_tl.synthetic`) are made to
look to the codec like fundus-camera files:

- optics: drawn at 1/4 of the frame and upscaled, as a fundus camera resolves some 10-20 um on
  the retina, two to four pixels of a 3888 px frame: edges are soft at pixel scale;
- texture: a fine multiplicative band-pass pattern (Gaussian scales 1.5-6 px, 3 %) for the
  choroidal mottling and nerve-fibre striation that the renderer draws only coarsely;
- noise: shot noise, its spread growing with the square root of brightness down to a read-noise
  floor of 0.4 grey levels, so the black surround stays nearly flat as in camera files; it is
  correlated the way demosaicing and in-camera noise reduction leave it, luma over about 2 px
  (Gaussian sigma 0.8 px), chroma in blotches of about 5 px (sigma 2.5 px);
- encoding: quality 90. 3888x2592 is the frame of the 10-megapixel Canon EOS bodies on many
  fundus cameras, which write 4:2:2 chroma; the second camera's 3216x2136 files get 4:2:0,
  libjpeg's default, which is what software that re-saves images writes.

The noise level (2.5 grey levels of luma, 3 of chroma at mid-grey) is the free parameter: it is
set so that the files average ~1 MB.

Stress corpus (worst case, also printed). The earlier generator: white per-pixel luma noise
(sigma 4) on the disc and chroma noise (sigma 1) everywhere, borders included, all 4:2:0, ~1.2 MB
on average. No camera writes noise like this, and it puts bytes into the black borders where
camera files have almost none, so it shows how far the figures fall on heavier files.

Every measurement runs in a fresh process, so its peak RSS is its own, and is repeated, keeping
the fastest run, because shared machines are noisy. Files are read once beforehand so that the
page cache, not the disk, serves them. Two figures help to read the others: how much parallel CPU
the machine gave at the time (a shared 2-core VM may give less than 2 cores), and how the peak RSS
of `build_shard` splits into anonymous memory and file-backed pages.

Usage: ``.venv/bin/python benchmarks/bench_cache.py [--images 48] [--size 299] [--repeats 5] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))
from fundus_tl.cache import build_shard
from fundus_tl.imaging import REDUCED_FLAGS, reduction_factor
from fundus_tl.synthetic import GRADES, render_fundus

FULL_SHAPE = (2592, 3888)  # (height, width) of most EyePACS photographs
SMALL_SHAPE = (2136, 3216)  # a second camera in the EyePACS mix
RENDER_SCALE = 4  # render at 1/4 of the file size, then upscale
NOISE_MARGIN = 256  # the noise fields are this much larger than an image, for random offsets
NOISE_SEED = 20150101
JPEG_QUALITY = 90
SUBSAMPLING = {"4:2:0": 0x221111, "4:2:2": 0x211111}  # cv2.IMWRITE_JPEG_SAMPLING_FACTOR values
# Camera-like corpus: shot noise in grey levels at mid-grey (the level that makes files ~1 MB),
# its correlation lengths, and texture.
CAMERA_LUMA_SIGMA = 2.5
CAMERA_CHROMA_SIGMA = 3.0
LUMA_CORRELATION_PX = 0.8  # Gaussian sigma: correlated over about 2 px, as demosaicing leaves it
CHROMA_CORRELATION_PX = 2.5  # chroma noise reduction leaves colour noise in blotches of about 5 px
READ_NOISE_VARIANCE = 0.03  # noise variance left on black (read noise), relative to mid-grey
TEXTURE_SCALES_PX = (1.5, 6.0)  # band-pass: fine detail between these Gaussian sigmas
TEXTURE_AMPLITUDE = 0.03  # relative brightness
LUMA_WEIGHTS = np.array([0.114, 0.587, 0.299], np.float32)  # BGR to luma (BT.601)
# Stress corpus: white noise per pixel.
STRESS_LUMA_SIGMA = 4.0  # grey levels, on the fundus disc only
STRESS_CHROMA_SIGMA = 1.0  # grey levels, per pixel and channel, everywhere
PREPROCESSING = "none"  # the seed path neither crops nor normalises
DECODE_REPEATS = 10
SPIN_ITERATIONS = 20_000_000  # about a quarter of a second of pure CPU work
MEMORY_POLL_SECONDS = 0.001

FLOOR_LABEL = "Decode floor: reduced-scale `cv2.imdecode` alone, bytes in memory, 1 thread"

T = TypeVar("T")


@dataclass
class Run:
    """One timed pass over a list of files in a fresh process."""

    images: int
    seconds: float
    baseline_mib: float  # peak RSS after imports, before any work
    peak_mib: float

    @property
    def images_per_second(self) -> float:
        """Throughput of this run."""
        return self.images / self.seconds


@dataclass
class Result:
    """The fastest of several runs of one measurement, with the highest peak RSS among them."""

    label: str
    fastest: Run
    peak_mib: float

    def describe(self) -> str:
        """Throughput and peak memory in one line."""
        run = self.fastest
        return (
            f"{run.images_per_second:.1f} img/s ({1000 * run.seconds / run.images:.1f} ms/img), "
            f"peak RSS {self.peak_mib:.0f} MiB"
        )


@dataclass
class MemoryResult:
    """Peak memory of one `build_shard` run; the anonymous and file-backed peaks are sampled."""

    images: int
    peak_mib: float
    peak_anonymous_mib: float
    peak_file_mib: float
    shard_mib: float

    def describe(self) -> str:
        """Peak RSS and its parts in one line."""
        return (
            f"{self.peak_mib:.0f} MiB (sampled peaks: anonymous {self.peak_anonymous_mib:.0f}, "
            f"file-backed {self.peak_file_mib:.0f}; shard {self.shard_mib:.1f} MiB)"
        )


# --- test images --------------------------------------------------------------------------------


def image_shape(number: int) -> tuple[int, int]:
    """(height, width) of image `number`: every fourth one comes from the smaller camera."""
    return SMALL_SHAPE if number % 4 == 3 else FULL_SHAPE


def image_path(image_dir: Path, number: int) -> Path:
    """Where image `number` lives; the name carries its dimensions."""
    height, width = image_shape(number)
    return image_dir / f"fundus-{number:04d}-{width}x{height}.jpeg"


def rendered(number: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic fundus `number` (BGR uint8) at full file size: drawn small, then upscaled."""
    height, width = image_shape(number)
    small = render_fundus(number % GRADES, rng, (height // RENDER_SCALE, width // RENDER_SCALE))
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def window(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[slice, slice]:
    """A random `shape` window into a noise field, so that images do not share their noise."""
    top, left = (int(offset) for offset in rng.integers(0, NOISE_MARGIN, 2))
    return np.s_[top : top + shape[0], left : left + shape[1]]


def correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian noise of unit standard deviation, smoothed over `sigma` px (channels separately)."""
    smoothed = cv2.GaussianBlur(rng.standard_normal(shape, np.float32), (0, 0), sigma)
    return smoothed / smoothed.std()


def encode_jpeg(image: np.ndarray, subsampling: str) -> bytes:
    """`image` (BGR uint8) as a JPEG of the benchmark's quality with the given chroma subsampling."""
    parameters = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, SUBSAMPLING[subsampling]]
    ok, encoded = cv2.imencode(".jpeg", image, parameters)
    if not ok:
        raise RuntimeError("OpenCV could not encode an image")
    return encoded.tobytes()


class CameraCorpus:
    """Files made the way a fundus camera makes them; see the module docstring for the reasoning."""

    name = "camera"
    title = "Camera-like corpus"

    def __init__(self, rng: np.random.Generator):
        shape = (FULL_SHAPE[0] + NOISE_MARGIN, FULL_SHAPE[1] + NOISE_MARGIN)
        self.luma = correlated_noise(rng, shape, LUMA_CORRELATION_PX)
        self.chroma = correlated_noise(rng, (*shape, 3), CHROMA_CORRELATION_PX)
        fine, coarse = (correlated_noise(rng, shape, sigma) for sigma in TEXTURE_SCALES_PX)
        texture = fine - 0.5 * coarse
        self.texture = texture / texture.std()

    @staticmethod
    def subsampling(number: int) -> str:
        """The 3888x2592 (Canon EOS) camera writes 4:2:2; the other camera's files are 4:2:0."""
        return "4:2:2" if image_shape(number) == FULL_SHAPE else "4:2:0"

    def synthesize(self, number: int) -> bytes:
        """Full-size JPEG `number`: texture, then shot noise that fades to read noise on the black surround."""
        rng = np.random.default_rng(number)
        image = rendered(number, rng).astype(np.float32)
        area = window(rng, image.shape[:2])
        image *= 1.0 + TEXTURE_AMPLITUDE * self.texture[area][:, :, None]
        shot = np.sqrt(np.maximum(image @ LUMA_WEIGHTS, 0.0) / 128.0 + READ_NOISE_VARIANCE)  # std / mid-grey std
        image += (CAMERA_LUMA_SIGMA * shot * self.luma[area])[:, :, None]
        image += CAMERA_CHROMA_SIGMA * shot[:, :, None] * self.chroma[area]
        return encode_jpeg(np.clip(image + 0.5, 0.0, 255.0).astype(np.uint8), self.subsampling(number))


class StressCorpus:
    """White per-pixel noise, also on the black surround: more bytes than camera files, worst case."""

    name = "stress"
    title = "Stress corpus (white noise)"

    def __init__(self, rng: np.random.Generator):
        height, width = FULL_SHAPE[0] + NOISE_MARGIN, FULL_SHAPE[1] + NOISE_MARGIN
        self.luma = np.round(rng.normal(0.0, STRESS_LUMA_SIGMA, (height, width))).astype(np.int16)
        self.chroma = np.round(rng.normal(0.0, STRESS_CHROMA_SIGMA, (height, width, 3))).astype(np.int16)

    @staticmethod
    def subsampling(number: int) -> str:
        """Every file is 4:2:0."""
        return "4:2:0"

    def synthesize(self, number: int) -> bytes:
        """Full-size JPEG `number`: luma noise on the fundus disc, chroma noise everywhere."""
        rng = np.random.default_rng(number)
        image = rendered(number, rng)
        area = window(rng, image.shape[:2])
        on_fundus = image.max(axis=2) > 10
        noisy = image.astype(np.int16) + self.chroma[area]
        noisy += np.where(on_fundus, self.luma[area], 0)[:, :, None]
        return encode_jpeg(np.clip(noisy, 0, 255).astype(np.uint8), self.subsampling(number))


Corpus = CameraCorpus | StressCorpus
CORPORA: tuple[type[Corpus], ...] = (CameraCorpus, StressCorpus)


def ensure_images(corpus: type[Corpus], image_dir: Path, count: int) -> list[Path]:
    """Write whichever of the corpus's first `count` JPEGs are missing; return all their paths."""
    paths = [image_path(image_dir, number) for number in range(count)]
    missing = [(number, path) for number, path in enumerate(paths) if not path.exists()]
    if not missing:
        print(f"reusing {count} JPEGs in {image_dir}")
        return paths
    image_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    generator = corpus(np.random.default_rng(NOISE_SEED))
    for number, path in missing:
        partial = path.with_suffix(".partial")
        partial.write_bytes(generator.synthesize(number))
        partial.replace(path)
    print(f"generated {len(missing)} of {count} JPEGs in {image_dir} in {time.perf_counter() - started:.1f} s")
    return paths


def image_dimensions(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header."""
    with Image.open(path) as image:
        return image.size


def chroma_subsampling(path: Path) -> str:
    """The chroma subsampling a JPEG was written with, from its luma sampling factors."""
    with Image.open(path) as image:
        _, horizontal, vertical, _ = image.layer[0]
    return {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0"}.get((horizontal, vertical), f"{horizontal}x{vertical}")


def describe_images(corpus: type[Corpus], paths: list[Path]) -> str:
    """Mean file size, and the dimensions and chroma subsampling found in the JPEG headers."""
    sizes = [path.stat().st_size for path in paths]
    kinds = pd.Series([(*image_dimensions(path), chroma_subsampling(path)) for path in paths]).value_counts()
    shapes = ", ".join(f"{count} x {width}x{height} {chroma}" for (width, height, chroma), count in kinds.items())
    return (
        f"{corpus.title}: {len(paths)} JPEGs (quality {JPEG_QUALITY}), mean {statistics.mean(sizes) / 1e6:.2f} MB "
        f"(min {min(sizes) / 1e6:.2f}, max {max(sizes) / 1e6:.2f}); {shapes}"
    )


def warm_page_cache(paths: list[Path]) -> int:
    """Read every file once so that timings measure decoding, not the disk; return the bytes read."""
    return sum(len(path.read_bytes()) for path in paths)


# --- measurements, each run in a fresh process ---------------------------------------------------


def memory_status() -> dict[str, float]:
    """This process's peak RSS (VmHWM) and current anonymous and file-backed RSS, in MiB."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmHWM", "RssAnon", "RssFile")}


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM) in MiB.

    Not `resource.getrusage(...).ru_maxrss`: Linux carries the parent's high-water mark across the
    fork and exec that start a spawned child, so ru_maxrss would report the parent's memory.
    """
    return memory_status()["VmHWM"]


@contextmanager
def peak_memory_sampled() -> Iterator[dict[str, float]]:
    """Poll memory_status() in a background thread; the yielded dict holds the peaks on exit."""
    peaks = memory_status()
    done = threading.Event()

    def poll() -> None:
        while not done.wait(MEMORY_POLL_SECONDS):
            for name, value in memory_status().items():
                peaks[name] = max(peaks[name], value)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield peaks
    finally:
        done.set()
        poller.join()


def time_seed_path(paths: list[str], size: int) -> Run:
    """The seed scripts' decode: full `cv2.imread`, then `cv2.resize` with its default bilinear."""
    baseline = peak_rss_mib()
    cv2.setNumThreads(1)
    started = time.perf_counter()
    for path in paths:
        image = cv2.imread(path)
        if image is None:
            raise RuntimeError(f"cv2.imread could not read {path}")
        cv2.resize(image, (size, size))
    return Run(len(paths), time.perf_counter() - started, baseline, peak_rss_mib())


def time_decode_floor(paths: list[str], size: int) -> Run:
    """Only libjpeg's reduced-scale decode of each file, from bytes already in memory: the floor.

    Entropy decoding is paid in full at every scale, so no JPEG pipeline on one core can beat
    this; the ratio floor / seed is the most the cache can gain per core on these files.
    """
    baseline = peak_rss_mib()
    cv2.setNumThreads(1)
    files = [(Path(path).read_bytes(), image_dimensions(Path(path))) for path in paths]
    started = time.perf_counter()
    for data, (width, height) in files:
        factor = reduction_factor(width, height, size)
        cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED_FLAGS.get(factor, cv2.IMREAD_COLOR))
    return Run(len(paths), time.perf_counter() - started, baseline, peak_rss_mib())


def time_build_shard(paths: list[str], size: int, threads: int, shard_dir: str) -> Run:
    """`build_shard` over `paths`, each listed under its own key (paths may repeat)."""
    baseline = peak_rss_mib()
    items = pd.DataFrame({"key": [f"image-{row:06d}" for row in range(len(paths))], "path": paths})
    shard = Path(shard_dir) / f"shard-{os.getpid()}.npy"
    started = time.perf_counter()
    index = build_shard(items, shard, shard.with_suffix(".tsv"), size, PREPROCESSING, threads)
    seconds = time.perf_counter() - started
    shard.unlink()
    shard.with_suffix(".tsv").unlink()
    failed = index[index["status"] != "ok"]
    if not failed.empty:
        raise RuntimeError(f"build_shard skipped {len(failed)} images: {failed['reason'].iloc[0]}")
    return Run(len(paths), seconds, baseline, peak_rss_mib())


def profile_build_shard_memory(
    paths: list[str], size: int, threads: int, shard_dir: str
) -> tuple[Run, dict[str, float]]:
    """`time_build_shard` while sampling peak anonymous and file-backed RSS."""
    with peak_memory_sampled() as peaks:
        run = time_build_shard(paths, size, threads, shard_dir)
    return run, peaks


def spin(iterations: int) -> float:
    """Pure CPU work in one core; returns its own duration in seconds."""
    started = time.perf_counter()
    sum(range(iterations))
    return time.perf_counter() - started


def cpu_parallelism() -> float:
    """Work done per second by two concurrent processes relative to one: 2.0 on two free cores.

    The single process gets the better of two tries, so that one slow spell cannot push the ratio
    above 2.
    """
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(spin, [1, 1]))  # start both workers before timing
        alone = min(pool.submit(spin, SPIN_ITERATIONS).result() for _ in range(2))
        started = time.perf_counter()
        list(pool.map(spin, [SPIN_ITERATIONS] * 2))
        together = time.perf_counter() - started
    return 2 * alone / together


def time_single_decodes(path: str, size: int) -> dict[str, float]:
    """Median milliseconds to bring one file to `size` px: full vs 1/4 vs 1/8 scale decode.

    The variants take turns, so that a slow spell on a shared machine hits all of them alike.
    """
    cv2.setNumThreads(1)
    data = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
    variants = {
        "full decode + INTER_LINEAR (seed)": (cv2.IMREAD_COLOR, cv2.INTER_LINEAR),
        "1/4-scale decode + INTER_AREA": (cv2.IMREAD_REDUCED_COLOR_4, cv2.INTER_AREA),
        "1/8-scale decode + INTER_AREA": (cv2.IMREAD_REDUCED_COLOR_8, cv2.INTER_AREA),
    }
    timings: dict[str, list[float]] = {}
    for name, (flag, _) in variants.items():
        decoded = cv2.imdecode(data, flag)  # warm-up, and the size the resize starts from
        if min(decoded.shape[:2]) < size:
            raise RuntimeError(f"{name} gives {decoded.shape[1]}x{decoded.shape[0]}, less than {size} px")
        timings[f"{name}, from {decoded.shape[1]}x{decoded.shape[0]}"] = []
    for _ in range(DECODE_REPEATS):
        for (flag, interpolation), times in zip(variants.values(), timings.values(), strict=True):
            started = time.perf_counter()
            cv2.resize(cv2.imdecode(data, flag), (size, size), interpolation=interpolation)
            times.append(1000 * (time.perf_counter() - started))
    return {name: statistics.median(times) for name, times in timings.items()}


def in_fresh_process(function: Callable[..., T], *args: object) -> T:
    """Run `function(*args)` in a newly spawned interpreter and return its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def best_of(label: str, runs: list[Run]) -> Result:
    """The fastest run, reported with the highest peak RSS of all runs."""
    return Result(label, min(runs, key=lambda run: run.seconds), max(run.peak_mib for run in runs))


def time_throughput(paths: list[str], size: int, repeats: int, shard_dir: str) -> tuple[list[Result], float]:
    """Seed path, cache with 1 thread and cache with 2 threads, interleaved so noise hits all alike.

    Each round also measures the CPU parallelism on offer; the best of the rounds is returned with
    the results.
    """
    measurements: dict[str, tuple[Callable[..., Run], tuple[object, ...]]] = {
        "Seed path: `cv2.imread` + `cv2.resize` INTER_LINEAR, 1 thread": (time_seed_path, (paths, size)),
        "`build_shard`, threads=1": (time_build_shard, (paths, size, 1, shard_dir)),
        "`build_shard`, threads=2": (time_build_shard, (paths, size, 2, shard_dir)),
        FLOOR_LABEL: (time_decode_floor, (paths, size)),
    }
    runs: dict[str, list[Run]] = {label: [] for label in measurements}
    parallelism = []
    for repeat in range(1, repeats + 1):
        parallelism.append(cpu_parallelism())
        print(f"  [{repeat}/{repeats}] CPU parallelism: 2 processes do {parallelism[-1]:.2f}x the work of 1")
        for label, (function, args) in measurements.items():
            run = in_fresh_process(function, *args)
            runs[label].append(run)
            print(
                f"  [{repeat}/{repeats}] {label}: {run.images_per_second:.1f} img/s, "
                f"peak RSS {run.peak_mib:.0f} MiB ({run.baseline_mib:.0f} after imports)"
            )
    return [best_of(label, label_runs) for label, label_runs in runs.items()], max(parallelism)


def time_memory_scaling(paths: list[str], size: int, shard_dir: str) -> list[MemoryResult]:
    """Peak RSS of `build_shard` (threads=2) for N and 4N items, the same files under new keys."""
    small = max(1, len(paths) // 2)
    results = []
    for count in (small, 4 * small):
        listed = [paths[row % len(paths)] for row in range(count)]
        run, peaks = in_fresh_process(profile_build_shard_memory, listed, size, 2, shard_dir)
        result = MemoryResult(count, run.peak_mib, peaks["RssAnon"], peaks["RssFile"], count * size * size * 3 / 2**20)
        print(f"  {count} items: peak RSS {result.describe()}, {run.baseline_mib:.0f} MiB after imports")
        results.append(result)
    return results


# --- report -------------------------------------------------------------------------------------


def cpu_description() -> str:
    """Core counts and the CPU model."""
    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    model = models[0] if models else platform.processor() or "unknown CPU"
    return f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {model}"


@dataclass
class CorpusReport:
    """What one corpus gave: its description, the table column and the findings to flag."""

    title: str
    summary: str
    rows: list[tuple[str, str]]
    notes: list[str]


def markdown_table(reports: list[CorpusReport]) -> str:
    """Measurements down, one column per corpus, ready to paste into a README."""
    lines = ["| Measurement | " + " | ".join(report.title for report in reports) + " |"]
    lines.append("| --- " * (len(reports) + 1) + "|")
    for row, (measurement, _) in enumerate(reports[0].rows):
        lines.append(f"| {measurement} | " + " | ".join(report.rows[row][1] for report in reports) + " |")
    return "\n".join(lines)


def surprises(
    per_core: float, ceiling: float, scaling: float, parallelism: float, small: MemoryResult, large: MemoryResult
) -> list[str]:
    """Findings that contradict what the cache is meant to deliver, with their numbers."""
    notes = []
    if per_core < 4:
        notes.append(
            f"cache with 1 thread is only {per_core:.2f}x the seed path (expected >= 4x); "
            f"the reduced-scale decode alone is {ceiling:.2f}x the seed path on these files"
        )
    if scaling < 1.5:
        notes.append(
            f"2 threads give only {scaling:.2f}x of 1 thread (expected about 2x); "
            f"the machine gave at best {parallelism:.2f}x to two pure-CPU processes"
        )
    for part, small_mib, large_mib in (
        ("total", small.peak_mib, large.peak_mib),
        ("anonymous", small.peak_anonymous_mib, large.peak_anonymous_mib),
    ):
        if large_mib > 1.2 * small_mib:
            notes.append(
                f"{part} peak RSS grows {large_mib / small_mib:.2f}x from {small.images} to {large.images} images"
            )
    return notes


def measure_corpus(corpus: type[Corpus], count: int, size: int, repeats: int, workdir: Path) -> CorpusReport:
    """All measurements on one corpus, with progress printed as they come."""
    files = ensure_images(corpus, workdir / corpus.name, count)
    summary = describe_images(corpus, files)
    print(summary)
    print(f"page cache warmed with {warm_page_cache(files) / 1e6:.0f} MB")
    paths = [str(path) for path in files]
    shard_dir = workdir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)

    print(f"throughput at {size} px, best of {repeats} fresh processes each:")
    (seed, one_thread, two_threads, floor), parallelism = time_throughput(paths, size, repeats, str(shard_dir))
    per_core = one_thread.fastest.images_per_second / seed.fastest.images_per_second
    ceiling = floor.fastest.images_per_second / seed.fastest.images_per_second
    efficiency = one_thread.fastest.images_per_second / floor.fastest.images_per_second
    scaling = two_threads.fastest.images_per_second / one_thread.fastest.images_per_second
    for result in (seed, one_thread, two_threads, floor):
        print(f"  best {result.label}: {result.describe()}")
    print(f"  cache (1 thread) / seed: {per_core:.2f}x; cache (2 threads) / cache (1 thread): {scaling:.2f}x")
    print(
        f"  decode floor / seed: {ceiling:.2f}x (the most any cache can gain per core); cache / floor: {efficiency:.2f}"
    )

    print("peak memory against image count:")
    small, large = time_memory_scaling(paths, size, str(shard_dir))
    growth = large.peak_mib / small.peak_mib
    anonymous_growth = large.peak_anonymous_mib / small.peak_anonymous_mib
    print(f"  {large.images} / {small.images} images: total {growth:.2f}x, anonymous {anonymous_growth:.2f}x")
    shutil.rmtree(shard_dir)

    one_file = next(path for path in paths if f"{FULL_SHAPE[1]}x{FULL_SHAPE[0]}" in path)
    one_file_label = f"One {FULL_SHAPE[1]}x{FULL_SHAPE[0]} JPEG to {size} px"
    one_file_mb = Path(one_file).stat().st_size / 1e6
    print(f"{one_file_label} ({one_file_mb:.2f} MB), 1 thread, median of {DECODE_REPEATS}:")
    decodes = in_fresh_process(time_single_decodes, one_file, size)
    for name, milliseconds in decodes.items():
        print(f"  {name}: {milliseconds:.1f} ms")

    rows = [(result.label, result.describe()) for result in (seed, one_thread, two_threads, floor)]
    rows += [
        ("Speed-up per core: cache (1 thread) / seed", f"**{per_core:.2f}x**"),
        ("Ceiling per core: decode floor / seed", f"{ceiling:.2f}x"),
        ("Cache throughput as a share of the decode floor, 1 thread", f"{100 * efficiency:.0f} %"),
        ("Thread scaling: cache (2 threads) / cache (1 thread)", f"{scaling:.2f}x"),
        ("CPU parallelism on offer: 2 pure-CPU processes / 1 (best round)", f"{parallelism:.2f}x"),
        (f"Peak RSS of `build_shard`, {small.images} images, threads=2", small.describe()),
        (f"Peak RSS of `build_shard`, {large.images} images, threads=2", large.describe()),
        (
            f"Peak RSS growth, {large.images} / {small.images} images",
            f"total {growth:.2f}x, anonymous {anonymous_growth:.2f}x",
        ),
        (f"{one_file_label}: its size", f"{one_file_mb:.2f} MB"),
    ]
    rows += [(f"{one_file_label}: {name}", f"{milliseconds:.1f} ms") for name, milliseconds in decodes.items()]
    notes = surprises(per_core, ceiling, scaling, parallelism, small, large)
    return CorpusReport(corpus.title, summary, rows, notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="distinct JPEGs per corpus (default 48)")
    parser.add_argument("--size", type=int, default=299, help="output side in pixels (default 299)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per throughput measurement, best kept")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fundus-bench-cache"), help="images and shards")
    args = parser.parse_args()
    started = time.perf_counter()

    reports = []
    for corpus in CORPORA:
        print(f"== {corpus.title} ==")
        reports.append(measure_corpus(corpus, args.images, args.size, args.repeats, args.workdir))

    print()
    for report in reports:
        print(f"{report.summary}.")
    print(
        f"Output {args.size} px, preprocessing '{PREPROCESSING}', best of {args.repeats} runs. "
        f"Machine: {cpu_description()}; OpenCV {cv2.__version__}, Python {platform.python_version()}."
    )
    print()
    print(markdown_table(reports))
    print()
    for report in reports:
        for note in report.notes:
            print(f"NOTE ({report.title}): {note}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
