from pathlib import Path

import pandas as pd
import pytest
import yaml

from fundus_tl.config import ConfigError, check_keys, check_scan, resolve_experiment
from fundus_tl.dataset import scan_dataset

from .conftest import CLASSES

SCHEMA = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())


def test_an_unknown_key_is_named_with_its_place_and_the_likely_meaning():
    config = {"data": {"root": "/d"}, "experiments": {"mine": {"model": "resnet18", "learning_rate": 0.01}}}
    with pytest.raises(ConfigError, match=r"experiments\.mine\.learning_rate: unknown key; did you mean 'lr'\?"):
        check_keys(config, SCHEMA)
    with pytest.raises(ConfigError, match=r"data\.images_folder: unknown key; did you mean 'images_dir'\?"):
        check_keys({"data": {"images_folder": "/d"}, "experiments": {}}, SCHEMA)
    with pytest.raises(ConfigError, match=r"^epochs: unknown key.* Known keys: data, folds"):
        check_keys({"epochs": 3}, SCHEMA)
    check_keys({"data": {"root": "/d"}, "experiments": {"mine": {"model": "resnet18", "lr": 0.01}}}, SCHEMA)


def test_empty_class_folders_stop_with_the_folder_and_what_was_found(tmp_path: Path):
    for name in CLASSES:
        (tmp_path / "train" / name).mkdir(parents=True)
    (tmp_path / "train" / "class0" / "readme.txt").write_text("x")
    data = {"root": str(tmp_path), "class_folders": CLASSES}
    scan = scan_dataset(data)
    with pytest.raises(ConfigError, match=r"no usable training images in data\.root .*readme\.txt: not an image"):
        check_scan(scan.images, scan.skipped, data)
    empty = pd.DataFrame(columns=["path", "reason"])
    with pytest.raises(ConfigError, match="no files at all"):
        check_scan(scan.images, empty, data)


def test_class_weights_must_match_the_class_count():
    entry = {"model": "resnet18", "class_weights": [1.0, 2.0]}
    with pytest.raises(ConfigError, match=r"experiments\.mine\.class_weights: 2 weights for 3 classes"):
        resolve_experiment("mine", entry, n_classes=3)
    assert resolve_experiment("mine", entry, n_classes=2)["class_weights"] == [1.0, 2.0]


def test_a_timm_name_timm_does_not_know_is_a_config_error():
    with pytest.raises(ConfigError, match=r"experiments\.mine\.model: timm has no model 'efficientnet_lite9'; similar"):
        resolve_experiment("mine", {"model": "timm:efficientnet_lite9"})
    with pytest.raises(ConfigError, match="needs a model name after the colon"):
        resolve_experiment("mine", {"model": "timm:"})
    assert resolve_experiment("mine", {"model": "timm:resnet18"})["image_size"] == 224


def test_fixed_size_models_and_all_zero_class_weights_are_config_errors():
    with pytest.raises(ConfigError, match=r"experiments\.mine\.image_size: torchvision's vit_b_16 takes only its"):
        resolve_experiment("mine", {"model": "vit_b_16", "image_size": 64})
    assert resolve_experiment("mine", {"model": "vit_b_16"})["image_size"] == 224
    with pytest.raises(ConfigError, match="all weights are 0"):
        resolve_experiment("mine", {"model": "resnet18", "class_weights": [0, 0]}, n_classes=2)


def test_an_error_that_ends_a_job_is_written_to_its_log(tmp_path: Path):
    import subprocess
    import sys

    log = tmp_path / "job.log"
    script = f"from fundus_tl.io import setup_logging\nsetup_logging({str(log)!r})\nraise ValueError('bad value 42')\n"
    scripts = Path(__file__).parents[1] / "workflow/scripts"
    result = subprocess.run([sys.executable, "-c", script], cwd=scripts, capture_output=True, text=True)
    assert result.returncode == 1
    assert "stopped by ValueError: bad value 42" in log.read_text() and "Traceback" in log.read_text()


def test_warm_up_longer_than_training_is_a_config_error():
    with pytest.raises(ConfigError, match=r"experiments\.mine\.warmup_epochs: 3 warm-up epochs leave none of the 2"):
        resolve_experiment("mine", {"model": "resnet18", "epochs": 2, "warmup_epochs": 3})
