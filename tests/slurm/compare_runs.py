"""Compare a local run and a SLURM run of the same workflow and config.

    python compare_runs.py LOCAL_WORKDIR SLURM_WORKDIR EXPERIMENT

Checks: the same set of files under results/ and resources/; byte-identical demo images, cache
shards and results/data/folds.tsv; identical out-of-fold and holdout metrics in
results/EXPERIMENT/summary.json; the same predicted grades (probabilities within 1e-6) in the
per-fold OOF tables and the holdout/test prediction tables. Exit status 1 on any difference.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import pandas as pd

FLOAT_TOLERANCE = 1e-9
PROBABILITY_TOLERANCE = 1e-6


def files(root: Path, sub: str) -> set[str]:
    base = root / sub
    return {str(path.relative_to(root)) for path in base.rglob("*") if path.is_file()} if base.exists() else set()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def diff_values(a, b, where: str, out: list[str]) -> None:
    """Collect differences between two JSON values (floats within FLOAT_TOLERANCE)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{where}.{key}: only in {'local' if key in a else 'slurm'}")
            else:
                diff_values(a[key], b[key], f"{where}.{key}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: length {len(a)} != {len(b)}")
        for index, (x, y) in enumerate(zip(a, b, strict=False)):
            diff_values(x, y, f"{where}[{index}]", out)
    elif isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, int | float) and isinstance(b, int | float)) or not math.isclose(
            a, b, rel_tol=0, abs_tol=FLOAT_TOLERANCE
        ):
            out.append(f"{where}: local {a!r} != slurm {b!r}")
    elif a != b:
        out.append(f"{where}: local {a!r} != slurm {b!r}")


def compare_tables(local: Path, slurm: Path, name: str, problems: list[str]) -> None:
    sep = "\t" if name.endswith(".tsv") else ","
    a, b = pd.read_csv(local / name, sep=sep), pd.read_csv(slurm / name, sep=sep)
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        problems.append(f"{name}: shape/columns differ ({a.shape} vs {b.shape})")
        return
    numeric = [c for c in a.columns if pd.api.types.is_float_dtype(a[c])]
    exact = [c for c in a.columns if c not in numeric]
    if not a[exact].astype(str).equals(b[exact].astype(str)):
        problems.append(f"{name}: non-float columns differ ({', '.join(exact)})")
    if numeric:
        worst = float((a[numeric] - b[numeric]).abs().max().max())
        if not worst <= PROBABILITY_TOLERANCE:
            problems.append(f"{name}: float columns differ by up to {worst:g}")


def main(local_dir: str, slurm_dir: str, experiment: str) -> int:
    local, slurm = Path(local_dir), Path(slurm_dir)
    problems: list[str] = []

    for sub in ("results", "resources"):
        a, b = files(local, sub), files(slurm, sub)
        if a != b:
            problems.append(
                f"{sub}/: file sets differ; only local: {sorted(a - b)[:10]}, only slurm: {sorted(b - a)[:10]}"
            )
        print(f"{sub}/: {len(a)} files locally, {len(b)} via SLURM")
    common = files(local, "results") & files(slurm, "results")
    required = ["results/data/folds.tsv", f"results/{experiment}/summary.json", "results/leaderboard.tsv"]
    for path in required:
        if path not in common:
            problems.append(f"missing output: {path}")

    identical = sorted(
        path
        for path in (files(local, "resources") & files(slurm, "resources")) | common
        if path.startswith(("resources/", "results/cache/")) or path == "results/data/folds.tsv"
    )
    differing = [path for path in identical if digest(local / path) != digest(slurm / path)]
    same = len(identical) - len(differing)
    print(f"byte-identical check (demo images, cache shards, folds.tsv): {same}/{len(identical)}")
    problems += [f"{path}: contents differ" for path in differing]

    summary_path = f"results/{experiment}/summary.json"
    if summary_path in common:
        a = json.loads((local / summary_path).read_text())
        b = json.loads((slurm / summary_path).read_text())
        metric_problems: list[str] = []
        for part in ("oof", "holdout"):
            if part not in a or part not in b:
                metric_problems.append(f"summary.{part}: missing")
            else:
                diff_values(a[part], b[part], f"summary.{part}", metric_problems)
        problems += metric_problems
        print(f"{'metric':<22}{'local':>12}{'slurm':>12}")
        for part in ("oof", "holdout"):
            for key in ("qwk", "accuracy", "macro_f1", "n"):
                x, y = a.get(part, {}).get(key), b.get(part, {}).get(key)
                print(f"{part + '.' + key:<22}{x!s:>12.10}{y!s:>12.10}")

    tables = sorted(
        path
        for path in common
        if path.endswith(("oof.tsv", "holdout_predictions.csv", "predictions.csv")) and path.startswith("results/")
    )
    for path in tables:
        compare_tables(local, slurm, path, problems)
    print(f"prediction tables compared: {len(tables)}")

    if problems:
        print("DIFFERENCES:")
        for line in problems:
            print(f"  - {line}")
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
