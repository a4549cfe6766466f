"""Train one fold: one readable loop over uint8 batches read from the cache.

Augmentation runs on whole batches (on the GPU when there is one), so the data path is a
memory-map gather plus a few tensor ops per batch, not a JPEG decode per image per epoch.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from tqdm import tqdm

from .cache import CachedImages
from .folds import check_class_counts
from .io import atomic_path
from .metrics import default_thresholds, grades_from_scores, quadratic_kappa
from .models import (
    build_model,
    count_parameters,
    freeze_first_layers,
    keep_frozen_batchnorm_in_eval,
    read_weights_file,
    save_model_file,
    unfreeze_all,
)

log = logging.getLogger(__name__)

TASKS = ("classification", "regression")


@dataclass
class Augmentation:
    """The seed's Keras ImageDataGenerator settings, applied per image on batches."""

    hflip: bool = True
    vflip: bool = True
    shift: float = 0.1
    zoom: float = 0.2
    rotation: float = 20.0

    @property
    def active(self) -> bool:
        return self.hflip or self.vflip or bool(self.shift or self.zoom or self.rotation)


@dataclass
class Experiment:
    """The keys of one ``experiments:`` entry that drive training (see the config schema)."""

    model: str
    task: str = "classification"
    image_size: int = 224
    preprocessing: str = "none"
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    lr: float = 1e-4
    batch_size: int = 16
    epochs: int = 20
    freeze_layers: int | str = 0
    head: str = "seed"
    dropout: float = 0.5
    class_weights: str | list | None = None
    label_smoothing: float = 0.0
    regression_loss: str = "mse"
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    min_lr: float = 1e-6
    early_stopping_patience: int = 10
    monitor: str = "val_loss"
    scheduler: str = "plateau"
    warmup_epochs: int = 0
    unfreeze_after: int | None = None
    backbone_lr_factor: float = 1.0
    aux_loss_weight: float = 0.4
    augment: Augmentation = field(default_factory=Augmentation)

    @property
    def uses_aux_head(self) -> bool:
        """InceptionV3's auxiliary classifier is trained alongside, as torchvision's references do."""
        return self.model == "inception_v3" and self.aux_loss_weight > 0

    @classmethod
    def from_config(cls, config: dict) -> Experiment:
        """Build from a config entry, ignoring keys that are not about training."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in config.items() if key in known}
        if isinstance(values.get("augment"), dict):
            values["augment"] = Augmentation(**values["augment"])
        elif values.get("augment") is False:
            values["augment"] = Augmentation(False, False, 0.0, 0.0, 0.0)
        elif values.get("augment") is True:
            values["augment"] = Augmentation()  # the seed's set
        if values.get("task", "classification") not in TASKS:
            raise ValueError(f"task '{values['task']}' is not one of {TASKS}")
        return cls(**values)


def resolve_device(device: str) -> torch.device:
    """``auto`` means the first CUDA GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def claim_gpu(count: int, lock_dir: str | Path | None = None) -> tuple[int, IO] | None:
    """Claim a free GPU id among `count` with an exclusive lock file; None when all are taken.

    Snakemake's ``--resources gpu=N`` bounds how many training jobs run at once but assigns no
    ids, so each job takes the first unlocked id. The lock lasts while the returned file is open
    (the process holds it until it exits, even when killed).
    """
    folder = Path(lock_dir or os.environ.get("FUNDUS_TL_GPU_LOCKS", tempfile.gettempdir()))
    folder.mkdir(parents=True, exist_ok=True)
    for gpu in range(count):
        handle = open(folder / f"fundus_tl-gpu{gpu}.lock", "a+")  # noqa: SIM115 - held for the job's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return gpu, handle
    return None


SIMULATED_GPUS_VARIABLE = "FUNDUS_TL_SIMULATE_GPUS"


def choose_device(device: str) -> tuple[torch.device, IO | None]:
    """Resolve ``auto``/``cuda`` to one free GPU of this machine (or the CPU), keeping its lock.

    With ``FUNDUS_TL_SIMULATE_GPUS=N`` set, a machine without CUDA claims ids among N pretend
    GPUs and trains on the CPU: the claiming of a multi-GPU node can be watched on any laptop.
    """
    simulated = int(os.environ.get(SIMULATED_GPUS_VARIABLE) or 0)
    target = resolve_device(device)
    if simulated and target.type == "cpu" and device == "auto":
        claimed = claim_gpu(simulated)
        if claimed is None:
            log.info("every one of the %d simulated GPUs is claimed; training on the CPU", simulated)
            return target, None
        log.info("claimed simulated GPU %d of %d; training on the CPU", claimed[0], simulated)
        return target, claimed[1]
    if target.type != "cuda" or target.index is not None:
        return target, None
    claimed = claim_gpu(torch.cuda.device_count())
    if claimed is None:
        log.warning("every GPU is claimed by another training job; sharing cuda:0")
        return torch.device("cuda:0"), None
    gpu, lock = claimed
    log.info("claimed GPU %d of %d", gpu, torch.cuda.device_count())
    return torch.device(f"cuda:{gpu}"), lock


def augment_batch(images: torch.Tensor, settings: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Random flips, rotation, shift and zoom, drawn independently for every image of the batch.

    Pixels moved in from outside are black, which is the fundus background.
    """
    count = images.shape[0]

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(count, generator=generator) * 2 - 1) * limit

    flip_x = (
        torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0) if settings.hflip else torch.ones(count)
    )
    flip_y = (
        torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0) if settings.vflip else torch.ones(count)
    )
    angle = uniform(settings.rotation) * math.pi / 180
    scale = 1 + uniform(settings.zoom)
    shift_x, shift_y = uniform(settings.shift) * 2, uniform(settings.shift) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip_x, -sin * flip_y, shift_x], dim=1),
            torch.stack([sin * flip_x, cos * flip_y, shift_y], dim=1),
        ],
        dim=1,
    ).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def to_tensor(batch: np.ndarray | torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 255] on `device`."""
    tensor = torch.as_tensor(batch).to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    return tensor.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def make_loss(experiment: Experiment, train_labels: np.ndarray, n_classes: int) -> torch.nn.Module:
    """Cross-entropy (with optional class weights) or a regression loss on the grade."""
    if experiment.task == "regression":
        if experiment.class_weights not in (None, "none") or experiment.label_smoothing:
            log.warning("class_weights and label_smoothing apply to classification; this regression ignores them")
        return torch.nn.SmoothL1Loss() if experiment.regression_loss == "smooth_l1" else torch.nn.MSELoss()
    weights = experiment.class_weights
    if weights == "balanced":
        present = np.unique(train_labels)
        balanced = compute_class_weight("balanced", classes=present, y=train_labels)
        weights = np.ones(n_classes)
        weights[present] = balanced
    elif weights in (None, "none"):
        weights = None
    elif len(weights) != n_classes:
        raise ValueError(f"class_weights has {len(weights)} values but there are {n_classes} classes")
    weight = torch.tensor(weights, dtype=torch.float32) if weights is not None else None
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=experiment.label_smoothing)


def _targets(labels: np.ndarray, task: str, device: torch.device) -> torch.Tensor:
    if task == "regression":
        return torch.as_tensor(labels, dtype=torch.float32, device=device)
    return torch.as_tensor(labels, dtype=torch.long, device=device)


def _loss_value(loss_fn: torch.nn.Module, outputs: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    return loss_fn(outputs.squeeze(1), targets) if task == "regression" else loss_fn(outputs, targets)


def grades_of(outputs: np.ndarray, task: str, n_classes: int) -> np.ndarray:
    """Predicted grade from raw outputs: argmax of logits, or rounded and clipped score."""
    if task == "regression":
        return grades_from_scores(outputs[:, 0], n_classes)
    return outputs.argmax(axis=1)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    images: CachedImages,
    keys: list[str],
    batch_size: int,
    device: torch.device,
    channels_last: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Raw model outputs (logits or scores) for `keys`, in order, as float32 (N, outputs)."""
    model.eval()
    outputs = []
    for start in range(0, len(keys), batch_size):
        batch = to_tensor(images.get(keys[start : start + batch_size]), device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs.append(model(batch).float().cpu())
    if not outputs:
        return np.zeros((0, 1), np.float32)
    return torch.cat(outputs).numpy()


def output_table(rows: pd.DataFrame, outputs: np.ndarray, task: str, n_classes: int) -> pd.DataFrame:
    """Predictions as a table: the rows' identity columns, probabilities or score, predicted grade."""
    table = rows.reset_index(drop=True).copy()
    if task == "regression":
        table["score"] = outputs[:, 0]
    else:
        probabilities = torch.softmax(torch.from_numpy(outputs), dim=1).numpy()
        for grade in range(n_classes):
            table[f"p{grade}"] = probabilities[:, grade]
    table["predicted"] = grades_of(outputs, task, n_classes)
    return table


def make_scheduler(experiment: Experiment, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """``plateau``: the seed's ReduceLROnPlateau on val_loss; ``cosine``: linear warm-up, then cosine to min_lr."""
    if experiment.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=experiment.plateau_factor,
            patience=experiment.plateau_patience,
            min_lr=experiment.min_lr,
        )
    if experiment.scheduler != "cosine":
        raise ValueError(f"scheduler '{experiment.scheduler}' is not one of plateau, cosine")
    warmup, total = experiment.warmup_epochs, experiment.epochs
    floor = min(experiment.min_lr / experiment.lr, 1.0)

    def factor(finished_epochs: int) -> float:
        """lr multiplier for the epoch after `finished_epochs` epochs."""
        if finished_epochs < warmup:
            return (finished_epochs + 1) / (warmup + 1)
        progress = (finished_epochs - warmup) / max(total - warmup, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class CachedRows(torch.utils.data.Dataset):
    """Cache rows by position in `keys`; DataLoader workers fetch a whole batch per call."""

    def __init__(self, images: CachedImages, keys: list[str]):
        self.images = images
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, position: int) -> torch.Tensor:
        return self.__getitems__([position])[0]

    def __getitems__(self, positions: list[int]) -> torch.Tensor:
        """One positioned read per row into one (B, S, S, 3) uint8 tensor: no per-image collation."""
        return torch.from_numpy(self.images.get([self.keys[position] for position in positions]))


def _whole_batch(batch: torch.Tensor) -> torch.Tensor:
    return batch


def loader_workers(threads: int, device: torch.device) -> int:
    """DataLoader workers for a job of `threads` threads.

    A GPU computes by itself, so all threads but the main one gather batches for it. On the CPU
    all threads run the model: reading a batch of uint8 rows takes well under a millisecond
    against hundreds for the training step, and a worker process would only take CPU from them
    (measured: 10-20 % fewer images per second with one worker on two cores).
    """
    return max(threads - 1, 1) if device.type == "cuda" else 0


def cached_batches(
    images: CachedImages, keys: list[str], batches: list[list[int]], workers: int, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """uint8 batches of `keys` at the positions in `batches`, in that order, read ahead by `workers`.

    The loader draws its workers' seeds from a generator of its own, not from torch's global one,
    so the training's random stream (dropout, augmentation) does not depend on the worker count.
    """
    return torch.utils.data.DataLoader(
        CachedRows(images, keys),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_whole_batch,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(0),
    )


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def split_rows(
    manifest: pd.DataFrame, images: CachedImages, fold: int, class_names: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and validation rows of `fold` (fold -1: all training rows vs the holdout).

    Images that could not be decoded are left out; every class must still fill every fold.
    """
    usable = manifest[manifest["key"].isin(images.index.index)]
    dropped = len(manifest) - len(usable)
    if dropped:
        log.warning("%d images of the manifest could not be decoded; see the skip report", dropped)
    train = usable["split"] == "train"
    check_class_counts(usable[train], class_names, max(int(usable["fold"].max()) + 1, 1))
    if fold >= 0:
        return usable[train & (usable["fold"] != fold)], usable[train & (usable["fold"] == fold)]
    return usable[train], usable[usable["split"] == "holdout"]


def run_fingerprint(experiment: Experiment, fold: int, seed: int, class_names: list[str], keys: list[str]) -> str:
    """What a checkpoint must match to be resumed from: settings, fold, seed and the images."""
    payload = json.dumps([asdict(experiment), fold, seed, class_names, keys], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class TrainingState:
    """Everything that changes from epoch to epoch, so a killed job resumes where it stopped."""

    epoch: int = 0
    history: list = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = 0
    stale_epochs: int = 0
    best_weights: dict | None = None


def save_checkpoint(
    path: Path, fingerprint: str, state: TrainingState, parts: dict, generator: torch.Generator
) -> None:
    """Write the resume checkpoint atomically after an epoch."""
    payload = {
        "fingerprint": fingerprint,
        "state": asdict(state),
        "parts": {name: part.state_dict() for name, part in parts.items()},
        "rng": {"torch": torch.get_rng_state(), "generator": generator.get_state()},
    }
    if torch.cuda.is_available():
        payload["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(
    path: Path, fingerprint: str, parts: dict, generator: torch.Generator, device: torch.device
) -> TrainingState:
    """Restore a checkpoint written for the same run; anything else starts from epoch 0."""
    if not path.exists():
        return TrainingState()
    payload = torch.load(path, map_location=device, weights_only=True)
    if payload.get("fingerprint") != fingerprint:
        log.warning("ignoring %s: it was written for other settings or images", path)
        return TrainingState()
    for name, part in parts.items():
        part.load_state_dict(payload["parts"][name])
    torch.set_rng_state(payload["rng"]["torch"].cpu())
    generator.set_state(payload["rng"]["generator"].cpu())
    if "cuda" in payload["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in payload["rng"]["cuda"]])
    state = TrainingState(**payload["state"])
    log.info("resuming from %s after epoch %d", path, state.epoch)
    return state


def train_fold(
    experiment: Experiment,
    *,
    manifest: pd.DataFrame,
    images: CachedImages,
    fold: int,
    class_names: list[str],
    weights_file: str | None,
    model_out: str | Path,
    history_out: str | Path,
    predictions_out: str | Path,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    threads: int = 1,
    device: str = "auto",
    amp: bool = True,
    channels_last: bool = True,
    log_every: int = 50,
) -> pd.DataFrame:
    """Train on every fold but `fold`, select the best epoch on `fold`, write model/history/predictions.

    With ``fold == -1`` the model trains on all training rows and is selected on the holdout.
    After every epoch a checkpoint is written to `checkpoint` (default: beside `model_out`); a
    rerun with the same settings resumes from it, and it is removed when the fold is done.
    Returns the history table.
    """
    torch.set_num_threads(max(threads, 1))
    torch.manual_seed(seed * 1000 + fold)
    generator = torch.Generator().manual_seed(seed * 1000 + fold)
    target_device, gpu_lock = choose_device(device)
    channels_last = channels_last and target_device.type == "cuda"
    amp_dtype = _amp_dtype(target_device, amp)
    workers = loader_workers(threads, target_device)
    n_classes = len(class_names)
    checkpoint = Path(checkpoint or Path(model_out).with_name("checkpoint.pt"))

    train_rows, valid_rows = split_rows(manifest, images, fold, list(class_names))
    train_keys, train_labels = train_rows["key"].tolist(), train_rows["label"].to_numpy(copy=True)
    valid_keys, valid_labels = valid_rows["key"].tolist(), valid_rows["label"].to_numpy(copy=True)
    if not train_keys or not valid_keys:
        raise ValueError(f"fold {fold}: {len(train_keys)} training and {len(valid_keys)} validation images")

    outputs = 1 if experiment.task == "regression" else n_classes
    pretrained = read_weights_file(weights_file, experiment.model) if weights_file else None
    model = build_model(
        experiment.model,
        outputs,
        head=experiment.head,
        dropout=experiment.dropout,
        state=pretrained,
        mean=tuple(experiment.mean),
        std=tuple(experiment.std),
        aux_head=experiment.uses_aux_head,
    )
    frozen = freeze_first_layers(model, experiment.freeze_layers) if experiment.freeze_layers else []
    if isinstance(experiment.freeze_layers, int) and experiment.freeze_layers > len(frozen):
        log.warning(
            "freeze_layers: %d, but the backbone has only %d parameterised layers: all of them are frozen",
            experiment.freeze_layers,
            len(frozen),
        )
    model = model.to(target_device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    total, trainable = count_parameters(model)
    log.info(
        "fold %d: %d train / %d validation images, %s on %s, %d parameters (%d trainable, %d layers frozen)",
        fold,
        len(train_keys),
        len(valid_keys),
        experiment.model,
        target_device,
        total,
        trainable,
        len(frozen),
    )

    loss_fn = make_loss(experiment, train_labels, n_classes).to(target_device)
    # Frozen parameters sit in the optimizer without gradients (Adam skips them) until unfrozen.
    optimizer = torch.optim.Adam(
        [
            {"params": list(model.backbone.parameters()), "lr": experiment.lr * experiment.backbone_lr_factor},
            {"params": list(model.head.parameters()), "lr": experiment.lr},
        ],
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    scheduler = make_scheduler(experiment, optimizer)
    scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16)
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    fingerprint = run_fingerprint(experiment, fold, seed, list(class_names), train_keys + valid_keys)
    state = load_checkpoint(checkpoint, fingerprint, parts, generator, target_device)

    def validate() -> tuple[np.ndarray, float]:
        outputs_ = predict(
            model, images, valid_keys, experiment.batch_size * 2, target_device, channels_last, amp_dtype
        )
        targets = _targets(valid_labels, experiment.task, target_device)
        with torch.no_grad():
            loss_ = _loss_value(loss_fn, torch.from_numpy(outputs_).to(target_device), targets, experiment.task)
        return outputs_, loss_.item()

    while state.epoch < experiment.epochs and state.stale_epochs < experiment.early_stopping_patience:
        epoch = state.epoch + 1
        started = time.perf_counter()
        if experiment.unfreeze_after is not None and epoch > experiment.unfreeze_after:
            if epoch == experiment.unfreeze_after + 1:
                log.info("epoch %d: unfreezing the whole network", epoch)
            unfreeze_all(model)
        model.train()
        keep_frozen_batchnorm_in_eval(model)
        order = torch.randperm(len(train_keys), generator=generator).tolist()
        if len(order) % experiment.batch_size == 1:
            order = order[:-1]  # a batch of one breaks BatchNorm statistics
        positions = [
            order[start : start + experiment.batch_size] for start in range(0, len(order), experiment.batch_size)
        ]
        loss_sum, correct, seen = 0.0, 0, 0
        batches = cached_batches(images, train_keys, positions, workers, pin_memory=target_device.type == "cuda")
        progress = tqdm(
            total=len(positions),
            desc=f"fold {fold} epoch {epoch}",
            unit="batch",
            leave=False,
            disable=not sys.stderr.isatty(),
        )
        for step, (chosen, pixels) in enumerate(zip(positions, batches, strict=True), start=1):
            batch = to_tensor(pixels, target_device, channels_last)
            if experiment.augment.active:
                batch = augment_batch(batch, experiment.augment, generator)
            targets = _targets(train_labels[chosen], experiment.task, target_device)
            try:
                with torch.autocast(target_device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(batch)
                    if isinstance(logits, tuple):
                        logits, aux_logits = logits
                        loss = _loss_value(loss_fn, logits.float(), targets, experiment.task)
                        loss = loss + experiment.aux_loss_weight * _loss_value(
                            loss_fn, aux_logits.float(), targets, experiment.task
                        )
                    else:
                        loss = _loss_value(loss_fn, logits.float(), targets, experiment.task)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"fold {fold}: loss is {loss.item()} at epoch {epoch}, batch {step}; "
                        f"lower 'lr' (now {optimizer.param_groups[0]['lr']:g}) or check the input images"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            except torch.cuda.OutOfMemoryError as error:
                raise RuntimeError(
                    f"CUDA out of memory with batch_size {experiment.batch_size} at {experiment.image_size} px "
                    f"({experiment.model}): lower the experiment's 'batch_size' (or 'image_size')"
                ) from error
            loss_sum += loss.item() * len(chosen)
            seen += len(chosen)
            predicted = grades_of(logits.detach().float().cpu().numpy(), experiment.task, n_classes)
            correct += int((predicted == train_labels[chosen]).sum())
            progress.update()
            progress.set_postfix(loss=f"{loss_sum / seen:.4f}")
            if step % log_every == 0:
                rate = seen / (time.perf_counter() - started)
                log.info("epoch %d batch %d: loss %.4f, %.1f img/s", epoch, step, loss_sum / seen, rate)
        progress.close()
        train_seconds = time.perf_counter() - started

        valid_outputs, val_loss = validate()
        valid_grades = grades_of(valid_outputs, experiment.task, n_classes)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_loss": val_loss,
            "val_accuracy": float((valid_grades == valid_labels).mean()),
            "val_qwk": quadratic_kappa(valid_labels, valid_grades, n_classes),
            "lr": max(group["lr"] for group in optimizer.param_groups),  # the head's (the backbone's may be lower)
            "seconds": time.perf_counter() - started,
            "images_per_second": seen / max(train_seconds, 1e-9),
        }
        state.history.append(row)
        state.epoch = epoch
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_loss)
        else:
            scheduler.step()
        score = row["val_qwk"] if experiment.monitor == "val_qwk" else -row["val_loss"]
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.stale_epochs = score, epoch, 0
            state.best_weights = copy.deepcopy(model.state_dict())
        else:
            state.stale_epochs += 1
        log.info(
            "epoch %d/%d: loss %.4f acc %.3f | val loss %.4f acc %.3f qwk %.3f | lr %.2g | %.0f s, %.1f img/s%s",
            epoch,
            experiment.epochs,
            row["train_loss"],
            row["train_accuracy"],
            val_loss,
            row["val_accuracy"],
            row["val_qwk"],
            row["lr"],
            row["seconds"],
            row["images_per_second"],
            " *" if improved else "",
        )
        save_checkpoint(checkpoint, fingerprint, state, parts, generator)
    if state.stale_epochs >= experiment.early_stopping_patience:
        log.info("early stop: %s did not improve for %d epochs", experiment.monitor, state.stale_epochs)

    model.load_state_dict(state.best_weights)
    meta = {
        "model": experiment.model,
        "task": experiment.task,
        "classes": list(class_names),
        "outputs": outputs,
        "head": experiment.head,
        "dropout": experiment.dropout,
        "image_size": experiment.image_size,
        "preprocessing": experiment.preprocessing,
        # Cut points from score to grade; evaluation refits them on the out-of-fold predictions.
        "thresholds": default_thresholds(n_classes) if experiment.task == "regression" else None,
        "mean": list(experiment.mean),
        "std": list(experiment.std),
        "imagenet_inputs": pretrained is not None,
        "aux_head": experiment.uses_aux_head,
        "fold": fold,
        "best_epoch": state.best_epoch,
        "monitor": experiment.monitor,
    }
    final_outputs, _ = validate()
    table = output_table(valid_rows[["key", "image", "label", "fold"]], final_outputs, experiment.task, n_classes)
    with atomic_path(predictions_out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    history_table = pd.DataFrame(state.history)
    with atomic_path(history_out) as tmp:
        history_table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    save_model_file(model_out, model, meta)
    checkpoint.unlink(missing_ok=True)
    if gpu_lock is not None:
        gpu_lock.close()
    log.info("fold %d: best epoch %d (%s)", fold, state.best_epoch, experiment.monitor)
    return history_table
