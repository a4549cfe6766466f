"""Real training runs on tiny images: both tasks, determinism, class weights, augmentation."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fundus_tl.cache import CachedImages, build_shard
from fundus_tl.dataset import scan_dataset
from fundus_tl.folds import make_folds
from fundus_tl.models import load_model_file, save_pretrained
from fundus_tl.training import Augmentation, Experiment, augment_batch, make_loss, train_fold

from .conftest import CLASSES

SIZE = 48


@pytest.fixture(scope="module")
def cached(tmp_path_factory) -> tuple[pd.DataFrame, CachedImages, str]:
    from .conftest import write_class_folders

    root = tmp_path_factory.mktemp("data")
    write_class_folders(root, "train", [8, 6, 6, 6, 6])
    write_class_folders(root, "validation", [2, 2, 2, 2, 2], first_patient=1000)
    scan = scan_dataset({"root": str(root), "class_folders": CLASSES})
    shards = []
    for split in ("train", "holdout"):
        part = scan.images[scan.images["split"] == split]
        out = root / "cache" / f"{split}.npy"
        build_shard(part[["key", "path"]], out, out.with_suffix(".tsv"), SIZE, "none")
        shards.append(out)
    weights = root / "lite0.pt"
    save_pretrained("timm:efficientnet_lite0", weights)
    return make_folds(scan.images, CLASSES, 2, seed=0), CachedImages(shards), str(weights)


def experiment(**overrides) -> Experiment:
    settings = {
        "model": "timm:efficientnet_lite0",
        "image_size": SIZE,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "lr": 1e-3,
        "batch_size": 8,
        "epochs": 2,
        "class_weights": "balanced",
    }
    return Experiment.from_config({**settings, **overrides})


def run(cached, out: Path, fold: int = 0, **overrides) -> pd.DataFrame:
    manifest, images, weights = cached
    return train_fold(
        experiment(**overrides),
        manifest=manifest,
        images=images,
        fold=fold,
        class_names=CLASSES,
        weights_file=weights,
        model_out=out / "model.pt",
        history_out=out / "history.tsv",
        predictions_out=out / "oof.tsv",
        seed=3,
        threads=1,
        device="cpu",
    )


def test_classification_fold_writes_model_history_and_out_of_fold_predictions(cached, tmp_path):
    history = run(cached, tmp_path)
    assert list(history["epoch"]) == [1, 2]
    for column in ("train_loss", "val_loss", "val_accuracy", "val_qwk", "lr", "images_per_second"):
        assert history[column].notna().all(), column
    oof = pd.read_csv(tmp_path / "oof.tsv", sep="\t")
    manifest = cached[0]
    assert sorted(oof["key"]) == sorted(manifest.loc[manifest["fold"] == 0, "key"])
    probabilities = oof[[f"p{k}" for k in range(5)]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    _, meta = load_model_file(tmp_path / "model.pt")
    assert meta["classes"] == CLASSES and meta["task"] == "classification" and meta["image_size"] == SIZE
    assert meta["best_epoch"] == int(history["val_loss"].idxmin()) + 1


def test_regression_fold_predicts_a_clipped_grade(cached, tmp_path):
    run(cached, tmp_path, task="regression", epochs=1, class_weights=None)
    oof = pd.read_csv(tmp_path / "oof.tsv", sep="\t")
    assert "score" in oof and "p0" not in oof
    assert oof["predicted"].between(0, 4).all()
    assert (oof["predicted"] == np.clip(np.rint(oof["score"]), 0, 4)).all()


def test_two_cpu_runs_with_one_seed_are_identical(cached, tmp_path):
    first = run(cached, tmp_path / "a", epochs=1)
    second = run(cached, tmp_path / "b", epochs=1)
    columns = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_qwk", "lr"]
    assert first[columns].equals(second[columns])
    assert (tmp_path / "a/oof.tsv").read_bytes() == (tmp_path / "b/oof.tsv").read_bytes()


def test_single_split_mode_selects_on_the_holdout(cached, tmp_path):
    run(cached, tmp_path, fold=-1, epochs=1)
    oof = pd.read_csv(tmp_path / "oof.tsv", sep="\t")
    assert len(oof) == 10 and (oof["fold"] == -1).all()


def test_balanced_and_explicit_class_weights():
    labels = np.array([0] * 8 + [1] * 2 + [2] * 2)
    balanced = make_loss(experiment(), labels, 3).weight
    assert torch.allclose(balanced, torch.tensor([0.5, 2.0, 2.0]))
    seed_weights = make_loss(experiment(class_weights=[0.012, 0.12, 0.058, 0.36, 0.43]), labels, 5).weight
    assert torch.allclose(seed_weights, torch.tensor([0.012, 0.12, 0.058, 0.36, 0.43]))
    with pytest.raises(ValueError, match="class_weights has 2 values but there are 5 classes"):
        make_loss(experiment(class_weights=[1, 2]), labels, 5)


def test_augmentation_changes_images_independently_and_keeps_range():
    images = torch.zeros(4, 3, 32, 32)
    images[:, :, 8:24, 4:12] = 255.0
    generator = torch.Generator().manual_seed(0)
    out = augment_batch(images, Augmentation(), generator)
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 255 + 1e-3
    assert not torch.equal(out[0], out[1])
    identity = augment_batch(images, Augmentation(False, False, 0, 0, 0), generator)
    assert torch.allclose(identity, images, atol=1e-3)


WORKER = """
import logging
import sys
import pandas as pd
from fundus_tl.cache import CachedImages
from fundus_tl.training import Experiment, train_fold
logging.basicConfig(level=logging.INFO)
manifest_file, weights, out, *shards = sys.argv[1:]
train_fold(
    Experiment.from_config({"model": "timm:efficientnet_lite0", "image_size": 48, "mean": [0.5] * 3,
                            "std": [0.5] * 3, "lr": 1e-3, "batch_size": 8, "epochs": 5}),
    manifest=pd.read_csv(manifest_file, sep="\\t", dtype={"image": str, "patient": str}),
    images=CachedImages(shards), fold=0, class_names=[f"class{k}" for k in range(5)], weights_file=weights,
    model_out=f"{out}/model.pt", history_out=f"{out}/history.tsv", predictions_out=f"{out}/oof.tsv",
    seed=5, threads=1, device="cpu",
)
"""


def test_training_killed_with_sigkill_resumes_to_the_same_result(cached, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    manifest, images, weights = cached
    manifest.to_csv(tmp_path / "manifest.tsv", sep="\t", index=False)
    shards = [str(Path(p)) for p in sorted(images.shard_files)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "workflow" / "scripts")}

    def worker(out: Path) -> subprocess.Popen:
        out.mkdir()
        command = [sys.executable, "-c", WORKER, str(tmp_path / "manifest.tsv"), weights, str(out), *shards]
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    assert worker(tmp_path / "straight").wait(timeout=600) == 0

    killed = worker(tmp_path / "killed")
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert checkpoint.exists() and not (tmp_path / "killed" / "model.pt").exists()
    resumed = subprocess.run(
        [sys.executable, "-c", WORKER, str(tmp_path / "manifest.tsv"), weights, str(tmp_path / "killed"), *shards],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert not checkpoint.exists()

    columns = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_qwk", "lr"]
    straight = pd.read_csv(tmp_path / "straight/history.tsv", sep="\t")[columns]
    assert straight.equals(pd.read_csv(tmp_path / "killed/history.tsv", sep="\t")[columns])
    assert (tmp_path / "straight/oof.tsv").read_bytes() == (tmp_path / "killed/oof.tsv").read_bytes()


def test_a_checkpoint_of_other_settings_is_not_resumed(cached, tmp_path, caplog):
    run(cached, tmp_path, epochs=1)
    torch.save({"fingerprint": "written for other settings"}, tmp_path / "checkpoint.pt")
    with caplog.at_level("WARNING"):
        history = run(cached, tmp_path, epochs=1, lr=5e-4)
    assert "ignoring" in caplog.text and "other settings" in caplog.text
    assert list(history["epoch"]) == [1]


def test_gpu_ids_are_claimed_once_each(tmp_path):
    from fundus_tl.training import claim_gpu

    first, lock_a = claim_gpu(2, tmp_path)
    second, lock_b = claim_gpu(2, tmp_path)
    assert {first, second} == {0, 1}
    assert claim_gpu(2, tmp_path) is None
    lock_a.close()
    again, lock_c = claim_gpu(2, tmp_path)
    assert again == first
    lock_b.close()
    lock_c.close()


def test_frozen_backbone_stays_put_and_unfreeze_after_releases_it(cached, tmp_path):
    from fundus_tl.models import read_weights_file

    pretrained = read_weights_file(cached[2], "timm:efficientnet_lite0")
    run(cached, tmp_path / "frozen", epochs=2, freeze_layers="backbone", unfreeze_after=5)
    frozen = torch.load(tmp_path / "frozen/model.pt", weights_only=True)["state_dict"]
    for name in ("conv_stem.weight", "bn1.running_mean", "blocks.3.0.conv_pw.weight", "bn2.running_var"):
        assert torch.equal(frozen[f"backbone.{name}"], pretrained[name]), name
    run(cached, tmp_path / "released", epochs=1, freeze_layers="backbone", unfreeze_after=0)
    released = torch.load(tmp_path / "released/model.pt", weights_only=True)["state_dict"]
    assert not torch.equal(released["backbone.conv_stem.weight"], pretrained["conv_stem.weight"])


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    from fundus_tl.training import make_scheduler

    settings = experiment(scheduler="cosine", warmup_epochs=2, epochs=6, lr=1e-3, min_lr=1e-5)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=settings.lr)
    scheduler = make_scheduler(settings, optimizer)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] < rates[1] < rates[2] == pytest.approx(1e-3)
    assert rates[2] > rates[3] > rates[4] > rates[5] >= 1e-5


def test_nan_loss_stops_with_epoch_and_batch(cached, tmp_path):
    from fundus_tl.models import read_weights_file

    poisoned = read_weights_file(cached[2], "timm:efficientnet_lite0")
    poisoned["conv_stem.weight"][0, 0, 0, 0] = float("nan")
    torch.save(poisoned, tmp_path / "nan.pth")
    manifest, images, _ = cached
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, batch 1; lower 'lr'"):
        train_fold(
            experiment(),
            manifest=manifest,
            images=images,
            fold=0,
            class_names=CLASSES,
            weights_file=str(tmp_path / "nan.pth"),
            model_out=tmp_path / "m.pt",
            history_out=tmp_path / "h.tsv",
            predictions_out=tmp_path / "o.tsv",
            device="cpu",
        )


def test_inception_trains_its_auxiliary_head_with_weight(tmp_path):
    from fundus_tl.models import build_model

    model = build_model("inception_v3", 5, aux_head=True).train()
    logits, aux = model(torch.rand(2, 3, 299, 299) * 255)
    assert logits.shape == aux.shape == (2, 5)
    assert isinstance(model.eval()(torch.rand(1, 3, 80, 80) * 255), torch.Tensor)
    assert experiment(model="inception_v3").uses_aux_head
    assert not experiment(model="inception_v3", aux_loss_weight=0).uses_aux_head


def test_fold_ensemble_averages_softmax_probabilities(cached, tmp_path):
    from fundus_tl.evaluation import ensemble_outputs
    from fundus_tl.training import predict

    manifest, images, _ = cached
    run(cached, tmp_path / "a", epochs=1)
    run(cached, tmp_path / "b", fold=1, epochs=1)
    keys = manifest.loc[manifest["split"] == "holdout", "key"].tolist()
    averaged, each, meta = ensemble_outputs(
        [tmp_path / "a/model.pt", tmp_path / "b/model.pt"], images, keys, device="cpu"
    )
    assert meta["task"] == "classification" and len(each) == 2
    by_hand = []
    for path in ("a", "b"):
        model, _ = load_model_file(tmp_path / path / "model.pt")
        by_hand.append(torch.softmax(torch.from_numpy(predict(model, images, keys, 4, torch.device("cpu"))), 1))
    assert np.allclose(averaged, ((by_hand[0] + by_hand[1]) / 2).numpy(), atol=1e-5)
    assert np.allclose(averaged.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_loader_workers_deliver_the_batches_asked_for_in_order(cached, start_method):
    """Workers read the cache in other processes (``spawn`` pickles it) and keep the batch order."""
    import multiprocessing

    from fundus_tl.training import cached_batches

    _, images, _ = cached
    keys = images.keys()
    positions = [[5, 0, 9], [1], [12, 3, 7, 2]]
    loader = cached_batches(images, keys, positions, workers=2)
    loader.multiprocessing_context = multiprocessing.get_context(start_method)
    batches = list(loader)
    assert [batch.shape[0] for batch in batches] == [3, 1, 4]
    for batch, chosen in zip(batches, positions, strict=True):
        assert batch.dtype == torch.uint8
        assert np.array_equal(batch.numpy(), images.get([keys[position] for position in chosen]))


def test_the_loader_leaves_the_global_random_stream_alone(cached):
    """Dropout and augmentation draw from torch's global RNG; reading batches must not consume it."""
    from fundus_tl.training import cached_batches

    _, images, _ = cached
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    for workers in (0, 1):
        list(cached_batches(images, images.keys(), [[0, 1], [2]], workers))
    assert torch.equal(torch.rand(3), expected)


def test_augment_true_false_and_a_partial_mapping():
    seed_set = Augmentation()
    assert Experiment.from_config({"model": "resnet18", "augment": True}).augment == seed_set
    assert not Experiment.from_config({"model": "resnet18", "augment": False}).augment.active
    partial = Experiment.from_config({"model": "resnet18", "augment": {"vflip": False}}).augment
    assert partial.vflip is False and partial.hflip == seed_set.hflip and partial.rotation == seed_set.rotation


def test_freezing_more_layers_than_there_are_warns_and_the_history_shows_the_heads_lr(cached, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fundus_tl.training"):
        history = run(cached, tmp_path, epochs=1, freeze_layers=100_000, backbone_lr_factor=0.1)
    assert any("freeze_layers: 100000, but the backbone has only" in message for message in caplog.messages)
    assert history["lr"].iloc[0] == pytest.approx(1e-3)  # the head's lr, not the backbone's 1e-4
