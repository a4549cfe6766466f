"""Train one fold: one readable loop over uint8 batches read from the cache.

Augmentation runs on whole batches (on the GPU when there is one), so the data path is a
memory-map gather plus a few tensor ops per batch, not a JPEG decode per image per epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from .cache import CachedImages
from .io import atomic_path
from .metrics import grades_from_scores, quadratic_kappa
from .models import (
    build_model,
    count_parameters,
    freeze_first_layers,
    keep_frozen_batchnorm_in_eval,
    read_weights_file,
    save_model_file,
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
    augment: Augmentation = field(default_factory=Augmentation)

    @classmethod
    def from_config(cls, config: dict) -> Experiment:
        """Build from a config entry, ignoring keys that are not about training."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in config.items() if key in known}
        if isinstance(values.get("augment"), dict):
            values["augment"] = Augmentation(**values["augment"])
        elif values.get("augment") is False:
            values["augment"] = Augmentation(False, False, 0.0, 0.0, 0.0)
        if values.get("task", "classification") not in TASKS:
            raise ValueError(f"task '{values['task']}' is not one of {TASKS}")
        return cls(**values)


def resolve_device(device: str) -> torch.device:
    """``auto`` means the first CUDA GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def to_tensor(batch: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 255] on `device`."""
    tensor = torch.from_numpy(batch).to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    return tensor.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def make_loss(experiment: Experiment, train_labels: np.ndarray, n_classes: int) -> torch.nn.Module:
    """Cross-entropy (with optional class weights) or a regression loss on the grade."""
    if experiment.task == "regression":
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


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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
    seed: int = 0,
    threads: int = 1,
    device: str = "auto",
    amp: bool = True,
    channels_last: bool = True,
    log_every: int = 50,
) -> pd.DataFrame:
    """Train on every fold but `fold`, select the best epoch on `fold`, write model/history/predictions.

    With a single fold (``fold`` -1) the model trains on all training rows and is selected on the
    holdout. Returns the history table.
    """
    torch.set_num_threads(max(threads, 1))
    torch.manual_seed(seed * 1000 + fold)
    generator = torch.Generator().manual_seed(seed * 1000 + fold)
    target_device = resolve_device(device)
    channels_last = channels_last and target_device.type == "cuda"
    amp_dtype = _amp_dtype(target_device, amp)
    n_classes = len(class_names)

    usable = manifest[manifest["key"].isin(images.index.index)]
    dropped = len(manifest) - len(usable)
    if dropped:
        log.warning("%d images of the manifest could not be decoded; see the skip report", dropped)
    if fold >= 0:
        train_rows = usable[(usable["split"] == "train") & (usable["fold"] != fold)]
        valid_rows = usable[(usable["split"] == "train") & (usable["fold"] == fold)]
    else:
        train_rows = usable[usable["split"] == "train"]
        valid_rows = usable[usable["split"] == "holdout"]
    train_keys, train_labels = train_rows["key"].tolist(), train_rows["label"].to_numpy(copy=True)
    valid_keys, valid_labels = valid_rows["key"].tolist(), valid_rows["label"].to_numpy(copy=True)
    if not train_keys or not valid_keys:
        raise ValueError(f"fold {fold}: {len(train_keys)} training and {len(valid_keys)} validation images")

    outputs = 1 if experiment.task == "regression" else n_classes
    state = read_weights_file(weights_file, experiment.model) if weights_file else None
    model = build_model(
        experiment.model,
        outputs,
        head=experiment.head,
        dropout=experiment.dropout,
        state=state,
        mean=tuple(experiment.mean),
        std=tuple(experiment.std),
    )
    frozen = freeze_first_layers(model, experiment.freeze_layers) if experiment.freeze_layers else []
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
    optimizer = torch.optim.Adam(
        (p for p in model.parameters() if p.requires_grad), lr=experiment.lr, betas=(0.9, 0.999), eps=1e-8
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=experiment.plateau_factor,
        patience=experiment.plateau_patience,
        min_lr=experiment.min_lr,
    )
    scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16)
    higher_is_better = experiment.monitor == "val_qwk"
    best_score, best_state, best_epoch, stale_epochs = -math.inf, None, 0, 0
    history = []

    for epoch in range(1, experiment.epochs + 1):
        started = time.perf_counter()
        model.train()
        keep_frozen_batchnorm_in_eval(model)
        order = torch.randperm(len(train_keys), generator=generator).numpy()
        if len(order) % experiment.batch_size == 1:
            order = order[:-1]  # a batch of one breaks BatchNorm statistics
        loss_sum, correct, seen = 0.0, 0, 0
        for step, start in enumerate(range(0, len(order), experiment.batch_size), start=1):
            chosen = order[start : start + experiment.batch_size]
            batch = to_tensor(images.get([train_keys[i] for i in chosen]), target_device, channels_last)
            if experiment.augment.active:
                batch = augment_batch(batch, experiment.augment, generator)
            targets = _targets(train_labels[chosen], experiment.task, target_device)
            with torch.autocast(target_device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(batch)
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
            loss_sum += loss.item() * len(chosen)
            seen += len(chosen)
            predicted = grades_of(logits.detach().float().cpu().numpy(), experiment.task, n_classes)
            correct += int((predicted == train_labels[chosen]).sum())
            if step % log_every == 0:
                rate = seen / (time.perf_counter() - started)
                log.info("epoch %d batch %d: loss %.4f, %.1f img/s", epoch, step, loss_sum / seen, rate)
        train_seconds = time.perf_counter() - started

        valid_outputs = predict(
            model, images, valid_keys, experiment.batch_size * 2, target_device, channels_last, amp_dtype
        )
        valid_tensor = torch.from_numpy(valid_outputs).to(target_device)
        with torch.no_grad():
            val_loss = _loss_value(
                loss_fn, valid_tensor, _targets(valid_labels, experiment.task, target_device), experiment.task
            ).item()
        valid_grades = grades_of(valid_outputs, experiment.task, n_classes)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_loss": val_loss,
            "val_accuracy": float((valid_grades == valid_labels).mean()),
            "val_qwk": quadratic_kappa(valid_labels, valid_grades, n_classes),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
            "images_per_second": seen / max(train_seconds, 1e-9),
        }
        history.append(row)
        scheduler.step(val_loss)
        score = row["val_qwk"] if higher_is_better else -row["val_loss"]
        improved = score > best_score
        if improved:
            best_score, best_epoch, stale_epochs = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale_epochs += 1
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
        if stale_epochs >= experiment.early_stopping_patience:
            log.info("early stop: %s did not improve for %d epochs", experiment.monitor, stale_epochs)
            break

    model.load_state_dict(best_state)
    meta = {
        "model": experiment.model,
        "task": experiment.task,
        "classes": list(class_names),
        "outputs": outputs,
        "head": experiment.head,
        "dropout": experiment.dropout,
        "image_size": experiment.image_size,
        "mean": list(experiment.mean),
        "std": list(experiment.std),
        "imagenet_inputs": state is not None,
        "fold": fold,
        "best_epoch": best_epoch,
        "monitor": experiment.monitor,
    }
    save_model_file(model_out, model, meta)
    final_outputs = predict(
        model, images, valid_keys, experiment.batch_size * 2, target_device, channels_last, amp_dtype
    )
    table = output_table(valid_rows[["key", "image", "label", "fold"]], final_outputs, experiment.task, n_classes)
    with atomic_path(predictions_out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    history_table = pd.DataFrame(history)
    with atomic_path(history_out) as tmp:
        history_table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    log.info("fold %d: best epoch %d (%s)", fold, best_epoch, experiment.monitor)
    return history_table
