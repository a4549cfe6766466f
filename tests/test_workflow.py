"""The whole DAG on tiny data, in folders whose names contain spaces, and what reruns after edits."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import fundus_like, write_class_folders

REPO = Path(__file__).resolve().parents[1]


def snakemake(
    workdir: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "tiny.yaml", *args]
    environment = {**os.environ, **(env or {})}
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=900, env=environment)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Job counts per rule of a dry run ({} when everything is up to date)."""
    output = snakemake(workdir, "--dry-run").stdout
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE)}


def copy_workflow(workdir: Path) -> None:
    """A user's checkout: the workflow files in a working directory of their own."""
    shutil.copy(REPO / "Snakefile", workdir)
    shutil.copytree(REPO / "workflow", workdir / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "config", workdir / "config")


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("workflow")
    workdir = base / "work dir with spaces"
    workdir.mkdir()
    copy_workflow(workdir)
    data = base / "my data (DR)"
    write_class_folders(data, "train", [8, 6, 6, 6, 6])
    write_class_folders(data, "validation", [2, 2, 2, 2, 2], first_patient=1000)
    test_dir = base / "unlabelled images"
    test_dir.mkdir()
    for index in range(3):
        import cv2

        cv2.imwrite(str(test_dir / f"{2000 + index}_left.jpeg"), fundus_like(index, 50 + index))
    (test_dir / "broken.jpeg").write_bytes(b"\xff\xd8\xff not really")
    (data / "train" / "class0" / "Thumbs.db").write_bytes(b"\0")
    config = {
        "data": {"root": str(data), "test_dir": str(test_dir)},
        "folds": 2,
        "cache": {"shards": 2, "threads": 1},
        "runtime": {"train_threads": 1},
        "run_experiments": ["tiny"],
        "experiments": {
            "tiny": {
                "model": "timm:efficientnet_lite0",
                "image_size": 48,
                "lr": 0.001,
                "batch_size": 8,
                "epochs": 1,
                "freeze_layers": 0,
                "class_weights": "balanced",
            },
        },
    }
    write_config(workdir, config)
    snakemake(workdir)
    return workdir, config


def test_full_run_writes_every_stage_output(project):
    workdir, _ = project
    summary = json.loads((workdir / "results/tiny/summary.json").read_text())
    assert summary["folds"] == 2 and summary["model"] == "timm:efficientnet_lite0"
    assert summary["task"] == "classification"
    for part in ("oof", "holdout"):
        assert 0 <= summary[part]["accuracy"] <= 1 and -1 <= summary[part]["qwk"] <= 1
    assert summary["oof"]["n"] == 32 and summary["holdout"]["n"] == 10
    for fold in (0, 1):
        history = pd.read_csv(workdir / f"results/tiny/fold{fold}/history.tsv", sep="\t")
        assert {"train_loss", "val_loss", "val_accuracy", "val_qwk", "lr"} <= set(history.columns)
    holdout = pd.read_csv(workdir / "results/tiny/holdout_predictions.csv")
    assert {"image", "actual", "predicted", "p0", "p4"} <= set(holdout.columns) and len(holdout) == 10
    predictions = pd.read_csv(workdir / "results/tiny/predictions.csv")
    assert sorted(predictions["image"].astype(str)) == ["2000_left", "2001_left", "2002_left"]
    skipped = pd.read_csv(workdir / "results/data/skipped.tsv", sep="\t")
    names = dict(zip(skipped["path"].map(lambda p: Path(p).name), skipped["reason"], strict=True))
    assert names["Thumbs.db"] == "system file"
    assert "not a readable image" in names["broken.jpeg"] or "could not be decoded" in names["broken.jpeg"]
    for rule_log in ("folds.log", "skip_report.log", "train/tiny/fold0.log", "evaluate/tiny.log"):
        assert (workdir / "results/logs" / rule_log).stat().st_size > 0, rule_log
    for plot in ("confusion_oof", "confusion_holdout", "learning_curves", "roc"):
        assert (workdir / f"results/tiny/plots/{plot}.png").stat().st_size > 10_000, plot
    assert len(summary["holdout"]["per_fold"]) == 2
    assert sum(row["support"] for row in summary["oof"]["per_class"]) == 32
    leaderboard = pd.read_csv(workdir / "results/leaderboard.tsv", sep="\t")
    assert leaderboard["experiment"].tolist() == ["tiny"]


def test_report_html_contains_the_plots(project):
    workdir, _ = project
    snakemake(workdir, "--report", "report.html")
    html = (workdir / "report.html").read_text(errors="replace")
    for name in ("confusion_oof.png", "learning_curves.png", "roc.png", "class_balance.png", "leaderboard.tsv"):
        assert name in html, name


def test_nothing_to_do_after_a_full_run(project):
    workdir, _ = project
    assert planned_jobs(workdir) == {}


def test_editing_lr_reruns_only_that_experiments_training_and_evaluation(project):
    workdir, config = project
    edited = json.loads(json.dumps(config))
    edited["experiments"]["tiny"]["lr"] = 0.0005
    write_config(workdir, edited)
    try:
        assert planned_jobs(workdir) == {"train": 2, "evaluate": 1, "predict": 1, "leaderboard": 1, "all": 1}
    finally:
        write_config(workdir, config)
    edited = json.loads(json.dumps(config))
    edited["experiments"]["tiny"]["expected_grade"] = True  # read by evaluation only: no training
    write_config(workdir, edited)
    try:
        assert planned_jobs(workdir) == {"evaluate": 1, "predict": 1, "leaderboard": 1, "all": 1}
    finally:
        write_config(workdir, config)


def test_image_size_switch_recaches_and_switching_back_reuses_the_old_cache(project):
    workdir, config = project
    edited = json.loads(json.dumps(config))
    edited["experiments"]["tiny"]["image_size"] = 40
    write_config(workdir, edited)
    try:
        jobs = planned_jobs(workdir)
        assert jobs["cache_shard"] == 6 and jobs["train"] == 2 and "folds" not in jobs
        snakemake(workdir)
        assert (workdir / "results/cache/40px-none/train/shard-000.npy").exists()
    finally:
        write_config(workdir, config)
    back = planned_jobs(workdir)
    assert "cache_shard" not in back and "folds" not in back
    assert back["train"] == 2


def test_adding_touching_or_removing_one_image_recaches_only_its_shard(project):
    workdir, config = project
    import os

    import cv2

    baseline = planned_jobs(workdir)  # earlier tests may have left training stale; the cache is current
    assert "cache_shard" not in baseline
    new = Path(config["data"]["root"]) / "train" / "class3" / "3000_left.jpeg"
    cv2.imwrite(str(new), fundus_like(3, 3000))
    try:
        assert planned_jobs(workdir)["cache_shard"] == 1
    finally:
        new.unlink()
    assert planned_jobs(workdir) == baseline

    existing = sorted((Path(config["data"]["root"]) / "train" / "class2").glob("*.jpeg"))[0]
    content, stamp = existing.read_bytes(), existing.stat()
    os.utime(existing, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))  # touched
    try:
        assert planned_jobs(workdir)["cache_shard"] == 1
    finally:
        os.utime(existing, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert planned_jobs(workdir) == baseline
    cv2.imwrite(str(existing), fundus_like(2, 4000))  # edited in place
    try:
        assert planned_jobs(workdir)["cache_shard"] == 1
    finally:
        existing.write_bytes(content)
        os.utime(existing, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    existing.unlink()
    try:
        assert planned_jobs(workdir)["cache_shard"] == 1
    finally:
        existing.write_bytes(content)
        os.utime(existing, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert planned_jobs(workdir) == baseline


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": {"root": None}}, "data.root is not set"),
        ({"data": {"root": "/no/such dir"}}, "data.root: '/no/such dir' has no 'train/' folder"),
        ({"folds": "five"}, "'five' is not of type 'integer'"),
        (
            {"data": {"patient_pattern": "^(.+)_left$"}},
            "data.patient_pattern: '^(.+)_left$' has no group named 'patient'",
        ),
        ({"experiments": {"tiny": {"model": "resnet5"}}}, "experiments.tiny.model: unknown model 'resnet5'"),
        ({"experiments": {"tiny": {"lr": "fast"}}}, "'fast' is not of type 'number'"),
        ({"experiments": {"tiny": {"learning_rate": 0.1}}}, "tiny.learning_rate: unknown key; did you mean 'lr'?"),
        (
            {"experiments": {"tiny": {"model": "timm:efficientnet_lite9"}}},
            "experiments.tiny.model: timm has no model 'efficientnet_lite9'",
        ),
        ({"experiments": {"tiny": {"class_weights": "balancd"}}}, "'balancd' is not valid under any of the given"),
        ({"experiments": {"tiny": {"class_weights": [1, 2]}}}, "tiny.class_weights: 2 weights for 5 classes"),
        ({"experiments": {"tiny": {"image_size": 0}}}, "['tiny']['image_size']"),
    ],
)
def test_config_errors_name_the_key(project, tmp_path, change, message):
    workdir, config = project
    broken = json.loads(json.dumps(config))
    for key, value in change.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                if isinstance(inner_value, dict):
                    broken[key][inner].update(inner_value)
                else:
                    broken[key][inner] = inner_value
        else:
            broken[key] = value
    write_config(workdir, broken)
    try:
        result = snakemake(workdir, "--dry-run", check=False)
    finally:
        write_config(workdir, config)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_a_configfile_runs_only_its_own_experiments(project):
    """Without run_experiments, --configfile's experiments replace config/config.yaml's examples."""
    workdir, config = project
    with_selection = planned_jobs(workdir)
    write_config(workdir, {key: value for key, value in config.items() if key != "run_experiments"})
    try:  # the InceptionV3 example would add its weights, training and evaluation
        assert planned_jobs(workdir) == with_selection
    finally:
        write_config(workdir, config)


def small_project(workdir: Path, folds: int, experiments: dict) -> Path:
    """A workflow checkout with a small class-folder data set beside it and a config of `experiments`."""
    workdir.mkdir()
    copy_workflow(workdir)
    data = workdir.parent / "data"
    write_class_folders(data, "train", [6, 4, 4, 4, 4])
    write_class_folders(data, "validation", [2, 2, 2, 2, 2], first_patient=1000)
    write_config(
        workdir,
        {
            "data": {"root": str(data)},
            "folds": folds,
            "cache": {"shards": 1, "threads": 1},
            "runtime": {"train_threads": 1},
            "run_experiments": list(experiments),
            "experiments": experiments,
        },
    )
    return workdir


def test_single_split_regression_and_classification_make_a_leaderboard(tmp_path):
    """The seed's _ffd script (folds: 1) and _reg script (regression) as two experiments of one run."""
    common = {"model": "timm:efficientnet_lite0", "image_size": 40, "batch_size": 8, "epochs": 1, "lr": 0.001}
    workdir = small_project(
        tmp_path / "single split",
        folds=1,
        experiments={"classify": common, "regress": {**common, "task": "regression"}},
    )
    result = snakemake(workdir)
    assert "Results (results/<experiment>/summary.json" in result.stdout + result.stderr
    board = pd.read_csv(workdir / "results/leaderboard.tsv", sep="\t")
    assert sorted(board["experiment"]) == ["classify", "regress"]
    assert board["holdout_qwk"].notna().all() and (board["parameters"] > 1_000_000).all()
    regress = json.loads((workdir / "results/regress/summary.json").read_text())
    assert regress["folds"] == 1 and "validation" in regress and "oof" not in regress
    assert regress["thresholds"]["values"] == [0.5, 1.5, 2.5, 3.5]
    assert regress["holdout"]["n"] == 10 and "with_thresholds" in regress["holdout"]
    holdout = pd.read_csv(workdir / "results/regress/holdout_predictions.csv")
    assert {"score", "predicted", "predicted_thresholds", "actual"} <= set(holdout.columns)


def test_csv_layout_with_three_grades_and_a_carved_holdout(tmp_path):
    """EyePACS-style flat folder + trainLabels.csv, no validation folder, another class count."""
    import cv2

    workdir = tmp_path / "csv run"
    workdir.mkdir()
    copy_workflow(workdir)
    images = tmp_path / "flat images"
    images.mkdir()
    rows = []
    for patient in range(24):
        for eye in ("left", "right"):
            grade = patient % 3
            cv2.imwrite(str(images / f"{patient}_{eye}.JPG"), fundus_like(grade * 2, patient * 2 + (eye == "left")))
            rows.append(f"{patient}_{eye},{grade}")
    (images / "notes.txt").write_text("not an image")
    labels = tmp_path / "trainLabels.csv"
    labels.write_text("image,level\n" + "\n".join(rows) + "\nghost_left,1\n")
    write_config(
        workdir,
        {
            "data": {
                "layout": "csv",
                "images_dir": str(images),
                "labels_csv": str(labels),
                "holdout_fraction": 0.25,
                "class_folders": ["none", "moderate", "severe"],
            },
            "folds": 2,
            "cache": {"shards": 2, "threads": 1},
            "runtime": {"train_threads": 1},
            "run_experiments": ["three"],
            "experiments": {
                "three": {"model": "timm:efficientnet_lite0", "image_size": 40, "batch_size": 8, "epochs": 1}
            },
        },
    )
    snakemake(workdir)
    manifest = pd.read_csv(workdir / "results/data/folds.tsv", sep="\t", dtype={"patient": str})
    assert len(manifest) == 48 and set(manifest["label"]) == {0, 1, 2}
    holdout = manifest[manifest["split"] == "holdout"]
    assert 8 <= len(holdout) <= 16
    assert not set(holdout["patient"]) & set(manifest.loc[manifest["split"] == "train", "patient"])
    summary = json.loads((workdir / "results/three/summary.json").read_text())
    assert summary["classes"] == ["none", "moderate", "severe"]
    assert len(summary["holdout"]["confusion_matrix"]) == 3 and summary["holdout"]["n"] == len(holdout)
    skipped = (workdir / "results/data/skipped.tsv").read_text()
    assert "notes.txt" in skipped and "no image file for 'ghost_left'" in skipped


def fold_log_spans(workdir: Path, experiment: str) -> dict[int, tuple[str, str, str]]:
    """Per fold: (claimed simulated GPU id, first and last timestamp) from the training logs."""
    spans = {}
    for log in sorted((workdir / "results/logs/train" / experiment).glob("fold*.log")):
        lines = log.read_text().splitlines()
        claims = [line for line in lines if "claimed simulated GPU" in line]
        assert len(claims) == 1, f"{log}: expected one GPU claim, found {claims}"
        gpu = re.search(r"claimed simulated GPU (\d+) of", claims[0]).group(1)
        spans[int(log.stem.removeprefix("fold"))] = (gpu, lines[0][:23], lines[-1][:23])
    return spans


def test_gpu_resources_bound_concurrent_folds_and_each_claims_its_own_gpu(tmp_path):
    """`--resources gpu=2` on a (simulated) two-GPU node: two folds at once, on GPU ids 0 and 1."""
    experiment = {"model": "timm:efficientnet_lite0", "image_size": 40, "batch_size": 8, "epochs": 2, "lr": 0.001}
    workdir = small_project(tmp_path / "two gpus", folds=2, experiments={"pair": experiment})
    env = {"FUNDUS_TL_SIMULATE_GPUS": "2", "FUNDUS_TL_GPU_LOCKS": str(tmp_path / "locks")}

    snakemake(workdir, "--resources", "gpu=2", env=env)
    spans = fold_log_spans(workdir, "pair")
    assert sorted(gpu for gpu, _, _ in spans.values()) == ["0", "1"]
    (_, start_a, end_a), (_, start_b, end_b) = spans.values()
    assert start_a < end_b and start_b < end_a, f"fold jobs did not overlap: {spans}"

    snakemake(workdir, "--resources", "gpu=1", "--forcerun", "train", "--until", "train", env=env)
    spans = fold_log_spans(workdir, "pair")
    assert [gpu for gpu, _, _ in spans.values()] == ["0", "0"]
    (_, start_a, end_a), (_, start_b, end_b) = sorted(spans.values(), key=lambda span: span[1])
    assert end_a <= start_b, f"with gpu=1 the fold jobs overlapped: {spans}"
