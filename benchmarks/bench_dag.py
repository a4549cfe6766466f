"""Benchmark how long Snakemake takes to plan the workflow on an EyePACS-size data set.

The workflow scans the data folders while the Snakefile is parsed (one ``os.scandir`` per folder and
one ``stat`` per file) and writes one inventory per cache shard: key, path, size and mtime of its
images, rewritten only when that changes. Cache shards and the fold manifest depend on these few
dozen inventories rather than on every image. This script checks that planning stays interactive
at EyePACS scale, 35,126 labelled training images in the seed's class folders plus 53,576 unlabelled
test images, against two goals: a fresh ``snakemake -n`` (no results yet) in under 30 s, and
``snakemake -n`` when everything is up to date in under 5 s. Each is the wall clock of the whole
command, Python start-up and parsing included. The goals are judged on the median of the repeats;
as the machine may be shared, each command's CPU time (user + sys) and the load average are shown too.
The parse-time scan (`fundus_tl.dataset.scan_dataset`) is also timed alone, in this process, and so
is ``snakemake --version`` (interpreter start-up and Snakemake's imports), to attribute the cost.

Data: every file is one 64x64 JPEG with a JPEG comment segment (COM) holding the file's name, so
each file is a valid image with its own bytes (no flood of cross-split duplicates in the skip
report) and its own inode (no hard links). The grades follow EyePACS's counts (25,810 / 2,443 /
5,292 / 873 / 708 of 35,126), names are ``{patient}_{left|right}.jpeg`` and there is no
validation/ folder, so ``data.holdout_fraction`` carves the holdout. The data is written once
under --workdir and reused; the file-system cache is warm for every timing.

Up-to-date state: Snakemake 9's ``--touch`` does not create missing outputs (it warns "Output
files not touched because they don't exist" and exits 0); the script checks this on every run.
So the state is made in three steps: (1) the data stage runs for real (``--until folds skip_report
pretrained_weights``: the cache shards of every image, the fold manifest, the skip report and the
Lite0 weights); (2) every output that ``snakemake --summary`` still lists as missing (training,
evaluation, prediction, leaderboard) is written as a placeholder file; (3) ``--touch --forcerun``
of those files' rules touches them in DAG order, so each is newer than its inputs, and records
their metadata as a real run would. Every timed up-to-date run must say "Nothing to be done".

When a goal is missed, that dry run is repeated under cProfile, and the profiled time is split
into Snakemake's phases and listed by the functions that run once per input file.

Usage: ``.venv/bin/python benchmarks/bench_dag.py [--train 35126] [--test 53576] [--shards 16]
[--repeats 3] [--workdir /tmp/fundus-bench-dag]``
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))
from fundus_tl.dataset import scan_dataset

REPO = Path(__file__).resolve().parents[1]

EYEPACS_TRAIN_COUNTS = (25_810, 2_443, 5_292, 873, 708)  # images per grade in EyePACS train
CLASS_FOLDERS = [f"class{grade}" for grade in range(len(EYEPACS_TRAIN_COUNTS))]
JPEG_SIDE = 64
EXPERIMENT = "lite0_bench"
FRESH_GOAL_SECONDS = 30.0
UP_TO_DATE_GOAL_SECONDS = 5.0
DATA_STAGE_RULES = ("folds", "skip_report", "pretrained_weights")
# The workflow's onsuccess handler prints these columns of the leaderboard, placeholder included.
LEADERBOARD_COLUMNS = (
    "experiment",
    "model",
    "oof_qwk",
    "oof_accuracy",
    "holdout_qwk",
    "holdout_accuracy",
    "training_minutes",
)
NOTHING_TO_DO = "Nothing to be done"
NOT_TOUCHED = "Output files not touched because they don't exist"
MISSING_METADATA = re.compile(r"^Rules with missing metadata: (.*)$", re.MULTILINE)
PER_FILE_CALLS = 10_000  # a function called this often runs once per input file (or more)
# (label, file suffix, function name, is a part of the phase above); names as in Snakemake 9.27.
PROFILE_PHASES = (
    ("parse the Snakefile and rules", "snakemake/workflow.py", "include", False),
    ("data-folder scan (scan_dataset)", "fundus_tl/dataset.py", "scan_dataset", True),
    ("job graph (DAG.update)", "snakemake/dag.py", "update", False),
    ("input file -> IOFile objects (Rule.expand_input)", "snakemake/rules.py", "expand_input", True),
    ("which rule makes this file? (DAG.file2jobs)", "snakemake/dag.py", "file2jobs", True),
    ("needrun: existence, mtimes, metadata (DAG.update_needrun)", "snakemake/dag.py", "update_needrun", False),
    ("dry-run job listing (Job.log_info)", "snakemake/jobs.py", "log_info", False),
    ("I/O cache save (save_iocache)", "snakemake/persistence/__init__.py", "save_iocache", False),
)


@dataclass
class Command:
    """One finished Snakemake command: wall clock, CPU time (user + sys), stdout and stderr together."""

    seconds: float
    cpu_seconds: float
    output: str


@dataclass
class Timings:
    """Repeated measurements of one thing: wall clock and CPU time."""

    seconds: list[float]
    cpu_seconds: list[float]

    @classmethod
    def of(cls, commands: list[Command]) -> Timings:
        """The timings of finished commands."""
        return cls([command.seconds for command in commands], [command.cpu_seconds for command in commands])

    @property
    def best(self) -> float:
        """The fastest run."""
        return min(self.seconds)

    @property
    def median(self) -> float:
        """The middle run, which the goals are judged on."""
        return statistics.median(self.seconds)

    def describe(self) -> str:
        """``best / median`` wall clock in seconds."""
        return f"{self.best:.2f} / {self.median:.2f}"

    def describe_cpu(self) -> str:
        """Median CPU time in seconds."""
        return f"{statistics.median(self.cpu_seconds):.2f}"


# --- data ---------------------------------------------------------------------------------------


def class_counts(total: int) -> list[int]:
    """Images per grade: EyePACS's proportions scaled to `total` (largest remainder)."""
    shares = [count * total / sum(EYEPACS_TRAIN_COUNTS) for count in EYEPACS_TRAIN_COUNTS]
    counts = [int(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda grade: counts[grade] - shares[grade])
    for grade in by_remainder[: total - sum(counts)]:
        counts[grade] += 1
    return counts


def jpeg_template() -> bytes:
    """A small encoded fundus-like disc on black."""
    image = np.zeros((JPEG_SIDE, JPEG_SIDE, 3), np.uint8)
    cv2.circle(image, (JPEG_SIDE // 2, JPEG_SIDE // 2), JPEG_SIDE // 2 - 4, (40, 80, 170), thickness=-1)
    ok, encoded = cv2.imencode(".jpeg", image)
    if not ok:
        raise RuntimeError("OpenCV could not encode the template JPEG")
    return encoded.tobytes()


def with_comment(jpeg: bytes, text: str) -> bytes:
    """`jpeg` with a COM segment holding `text` right after the start-of-image marker."""
    comment = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def eye_names(first_patient: int, count: int) -> list[str]:
    """``{patient}_left`` and ``{patient}_right`` for consecutive patients, `count` names."""
    return [f"{first_patient + index // 2}_{'right' if index % 2 else 'left'}" for index in range(count)]


def write_images(folder: Path, names: list[str], template: bytes) -> None:
    """``folder/{name}.jpeg`` for every name: the template with the name in its comment segment."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.jpeg").write_bytes(with_comment(template, f"{folder.name}/{name}"))


def ensure_data(workdir: Path, n_train: int, n_test: int) -> Path:
    """The data root (train/class0..class4/ and test/), written unless a complete copy is there."""
    root = workdir / f"eyepacs-{n_train}-{n_test}"
    complete = root.with_name(f"{root.name}.complete")
    if complete.exists():
        print(f"reusing {n_train} training and {n_test} test images in {root}")
        return root
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    template = jpeg_template()
    patient = 10  # EyePACS numbers patients from 10
    for folder, count in zip(CLASS_FOLDERS, class_counts(n_train), strict=True):
        write_images(root / "train" / folder, eye_names(patient, count), template)
        patient += (count + 1) // 2
    write_images(root / "test", eye_names(patient, n_test), template)
    complete.touch()
    print(f"wrote {n_train} training and {n_test} test images to {root} in {time.perf_counter() - started:.1f} s")
    return root


# --- workflow runs ------------------------------------------------------------------------------


def data_config(data_root: Path) -> dict:
    """The ``data:`` config section for the benchmark data."""
    return {"root": str(data_root), "test_dir": str(data_root / "test"), "class_folders": CLASS_FOLDERS}


def setup_run_dir(run_dir: Path, data_root: Path, shards: int) -> None:
    """A fresh copy of the workflow with a config for the benchmark data (as tests/test_workflow.py)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    shutil.copy(REPO / "Snakefile", run_dir)
    shutil.copytree(REPO / "workflow", run_dir / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "config", run_dir / "config")
    config = {
        "data": data_config(data_root),
        "folds": 5,
        "cache": {"shards": shards, "threads": 1},
        "runtime": {"train_threads": 1},
        "run_experiments": [EXPERIMENT],
        "experiments": {
            EXPERIMENT: {"model": "timm:efficientnet_lite0", "image_size": 64, "epochs": 1, "batch_size": 16},
        },
    }
    (run_dir / "bench.yaml").write_text(yaml.safe_dump(config))


def snakemake(run_dir: Path, *args: str, python_args: tuple[str, ...] = ()) -> Command:
    """Run ``python [python_args] -m snakemake --configfile bench.yaml args`` in `run_dir`, timed."""
    command = [sys.executable, *python_args, "-m", "snakemake", "--configfile", "bench.yaml", *args]
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    result = subprocess.run(command, cwd=run_dir, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{output[-5000:]}")
    return Command(seconds, children_cpu_seconds() - cpu_before, output)


def children_cpu_seconds() -> float:
    """User + system time of all finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reset_results(run_dir: Path) -> None:
    """Back to a workflow that has never run: no results, no metadata."""
    for name in ("results", ".snakemake"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from the "Job stats" table of a dry run."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE)}


def time_fresh_dry_runs(run_dir: Path, cores: str, repeats: int) -> tuple[Timings, dict[str, int]]:
    """``snakemake -n`` with no results and no metadata, `repeats` times; also the jobs per rule."""
    runs, counts = [], {}
    for repeat in range(1, repeats + 1):
        reset_results(run_dir)
        run = snakemake(run_dir, "--cores", cores, "--dry-run")
        counts = job_counts(run.output)
        runs.append(run)
        print(f"  fresh dry run {repeat}/{repeats}: {run.seconds:.1f} s, {sum(counts.values())} jobs")
    return Timings.of(runs), counts


def result_files(run_dir: Path) -> list[Path]:
    """Files under results/ other than logs."""
    results = run_dir / "results"
    return [path for path in results.rglob("*") if path.is_file() and path.relative_to(results).parts[0] != "logs"]


def check_touch_without_outputs(run_dir: Path, cores: str) -> str:
    """What ``snakemake --touch`` does when no output exists yet, in one line."""
    reset_results(run_dir)
    run = snakemake(run_dir, "--cores", cores, "--touch")
    created = len(result_files(run_dir))
    warned = run.output.count(NOT_TOUCHED)
    reset_results(run_dir)
    return (
        f"`snakemake --touch` with no outputs: exit status 0, {created} output files created, "
        f'{warned} jobs warned "{NOT_TOUCHED}" ({run.seconds:.0f} s)'
    )


def missing_outputs(summary: str) -> dict[str, str]:
    """Output file -> rule for the rows of ``snakemake --summary`` whose status is "missing"."""
    rows = (line.split("\t") for line in summary.splitlines())
    return {row[0]: row[2] for row in rows if len(row) >= 5 and row[4] == "missing"}


def make_up_to_date(run_dir: Path, cores: str) -> list[str]:
    """Run the data stage, add placeholders for the rest and touch them; return what was done."""
    data_stage = snakemake(run_dir, "--cores", cores, "--until", *DATA_STAGE_RULES)
    cached = len(list((run_dir / "results" / "cache").rglob("shard-*.npy")))
    missing = missing_outputs(snakemake(run_dir, "--summary").output)
    for path in missing:
        placeholder = run_dir / path
        placeholder.parent.mkdir(parents=True, exist_ok=True)
        is_leaderboard = placeholder.name == "leaderboard.tsv"
        placeholder.write_text("\t".join(LEADERBOARD_COLUMNS) + "\n" if is_leaderboard else "placeholder\n")
    rules = sorted(set(missing.values()))
    touch = snakemake(run_dir, "--cores", cores, "--touch", "--forcerun", *rules)
    if NOT_TOUCHED in touch.output:
        raise RuntimeError(f"--touch left outputs missing:\n{touch.output[-5000:]}")
    return [
        f"real run of `--until {' '.join(DATA_STAGE_RULES)}`: {cached} cache shards, fold manifest, skip report, "
        f"Lite0 weights ({data_stage.seconds:.0f} s)",
        f"{len(missing)} placeholder files for the outputs `--summary` listed as missing, of rules {', '.join(rules)}",
        f"`--touch --forcerun {' '.join(rules)}` ({touch.seconds:.0f} s)",
    ]


def time_up_to_date_dry_runs(run_dir: Path, cores: str, repeats: int) -> tuple[Timings, str]:
    """``snakemake -n`` on the up-to-date state, `repeats` times; each must have nothing to do."""
    runs, metadata = [], "complete"
    for repeat in range(1, repeats + 1):
        run = snakemake(run_dir, "--cores", cores, "--dry-run")
        if NOTHING_TO_DO not in run.output or "Job stats:" in run.output:
            raise RuntimeError(f"the up-to-date state is not up to date:\n{run.output[-5000:]}")
        missing_metadata = MISSING_METADATA.search(run.output)
        if missing_metadata:
            metadata = f"missing for rules {missing_metadata.group(1)}"
        runs.append(run)
        print(f"  up-to-date dry run {repeat}/{repeats}: {run.seconds:.1f} s, {NOTHING_TO_DO!r}")
    return Timings.of(runs), metadata


def time_scan(data: dict, repeats: int) -> tuple[Timings, int]:
    """The parse-time scan alone, in this process; also the number of image files found."""
    seconds, cpu_seconds, images = [], [], 0
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        images = len(scan_dataset(data).images)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    return Timings(seconds, cpu_seconds), images


def time_startup(run_dir: Path, repeats: int) -> tuple[Timings, str]:
    """``snakemake --version``: interpreter start-up and Snakemake's imports; also the version."""
    runs = [snakemake(run_dir, "--version") for _ in range(repeats)]
    return Timings.of(runs), runs[-1].output.strip()


# --- profile ------------------------------------------------------------------------------------


def short_name(function: tuple[str, int, str]) -> str:
    """``package/module.py:line(function)`` without the site-packages or run-directory prefix."""
    filename, line, name = function
    if filename == "~":
        return name
    for marker in ("site-packages/", f"/lib/python{sys.version_info.major}.{sys.version_info.minor}/", "workflow/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{line}({name})"


def profile_dry_run(run_dir: Path, cores: str, label: str) -> str:
    """Repeat one dry run under cProfile; Markdown tables of where its time goes."""
    profile = run_dir.parent / f"{label}.prof"
    run = snakemake(run_dir, "--cores", cores, "--dry-run", python_args=("-m", "cProfile", "-o", str(profile)))
    stats = pstats.Stats(str(profile)).stats  # (file, line, name) -> (calls, primitive calls, self, cumulative, ...)
    total = max(cumulative for _, _, _, cumulative, _ in stats.values())
    lines = [
        f"### Profile of the {label} dry run ({profile}: {run.seconds:.1f} s wall under cProfile, "
        f"{total:.1f} s profiled)",
        "",
        "| phase | profiled s | share |",
        "|---|---:|---:|",
    ]
    top_level = 0.0
    for phase, suffix, name, is_part in PROFILE_PHASES:
        matches = [row[3] for (file, _, function), row in stats.items() if file.endswith(suffix) and function == name]
        cumulative = max(matches, default=0.0)
        top_level += 0.0 if is_part else cumulative
        lines.append(
            f"| {'  of which ' if is_part else ''}{phase} | {cumulative:.1f} | {100 * cumulative / total:.0f} % |"
        )
    rest = total - top_level
    lines.append(f"| rest: imports, CLI, scheduling | {rest:.1f} | {100 * rest / total:.0f} % |")
    per_file = sorted(
        ((function, row) for function, row in stats.items() if row[1] >= PER_FILE_CALLS and function[0] != "~"),
        key=lambda item: -item[1][3],
    )
    lines += [
        "",
        f"Functions called at least {PER_FILE_CALLS:,} times (once per input file or more), by cumulative time:",
        "",
        "| calls | cumulative s | function |",
        "|---:|---:|---|",
    ]
    lines += [f"| {row[0]:,} | {row[3]:.1f} | `{short_name(function)}` |" for function, row in per_file[:12]]
    lines += ["", "By self time:", "", "| calls | self s | function |", "|---:|---:|---|"]
    by_self = sorted(stats.items(), key=lambda item: -item[1][2])[:10]
    lines += [f"| {row[0]:,} | {row[2]:.1f} | `{short_name(function)}` |" for function, row in by_self]
    return "\n".join(lines)


# --- report -------------------------------------------------------------------------------------


def verdict(timings: Timings, goal: float) -> str:
    """The goal and whether the median meets it."""
    return f"< {goal:.0f} s: {'pass' if timings.median < goal else 'FAIL'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=35_126, help="labelled training images")
    parser.add_argument("--test", type=int, default=53_576, help="unlabelled test images")
    parser.add_argument("--shards", type=int, default=16, help="cache.shards")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each measurement")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fundus-bench-dag"))
    args = parser.parse_args()
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    cores = str(len(os.sched_getaffinity(0)))
    data_root = ensure_data(args.workdir, args.train, args.test)
    run_dir = args.workdir / f"run-{args.train}-{args.test}-{args.shards}"
    setup_run_dir(run_dir, data_root, args.shards)
    profiles = []

    startup, version = time_startup(run_dir, args.repeats)
    scan, images = time_scan(data_config(data_root), args.repeats)
    print(f"scan: {scan.describe()} s for {images} image files; `snakemake --version`: {startup.describe()} s")
    fresh, counts = time_fresh_dry_runs(run_dir, cores, args.repeats)
    if fresh.median >= FRESH_GOAL_SECONDS:
        reset_results(run_dir)
        profiles.append(profile_dry_run(run_dir, cores, "fresh"))
    touch_check = check_touch_without_outputs(run_dir, cores)
    print(touch_check)
    steps = make_up_to_date(run_dir, cores)
    up_to_date, metadata = time_up_to_date_dry_runs(run_dir, cores, args.repeats)
    if up_to_date.median >= UP_TO_DATE_GOAL_SECONDS:
        profiles.append(profile_dry_run(run_dir, cores, "up-to-date"))

    print(f"\n## `snakemake -n` at EyePACS scale ({run_dir})\n")
    print(
        "| image files (train + test) | shards | jobs | fresh `-n` s (best / median) | goal | "
        "up-to-date `-n` s (best / median) | goal | scan s (best / median) | cores | Snakemake |"
    )
    print("|---|---:|---:|---:|---|---:|---|---:|---:|---|")
    print(
        f"| {images:,} ({args.train:,} + {args.test:,}) | {args.shards} | {sum(counts.values())} | "
        f"{fresh.describe()} | {verdict(fresh, FRESH_GOAL_SECONDS)} | {up_to_date.describe()} | "
        f"{verdict(up_to_date, UP_TO_DATE_GOAL_SECONDS)} | {scan.describe()} | {cores} | {version} |"
    )
    print(f"\n{args.repeats} runs each; wall clock of the whole command; goals judged on the median.")
    print(
        f"CPU time (user + sys), median: fresh {fresh.describe_cpu()} s, up-to-date {up_to_date.describe_cpu()} s, "
        f"scan {scan.describe_cpu()} s. 1-minute load average at start / end: "
        f"{load_at_start:.1f} / {os.getloadavg()[0]:.1f} (this benchmark keeps about one core busy; "
        f"more means other processes shared the {cores} cores)."
    )
    print(f"Jobs per rule: {', '.join(f'{rule} {count}' for rule, count in counts.items())}.")
    print(f"`snakemake --version` (start-up and imports only): {startup.describe()} s.")
    print(f"{touch_check}.")
    print("Up-to-date state: " + "; then ".join(steps) + f"; metadata {metadata}.")
    for profile in profiles:
        print(f"\n{profile}")
    print(f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
