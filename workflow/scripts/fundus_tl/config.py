"""Checks of the workflow config beyond its JSON schema, with messages that name the key."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pandas as pd

from .dataset import DEFAULT_PATIENT_PATTERN
from .imaging import PREPROCESSING
from .models import UnknownModel, model_defaults

EXPERIMENT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


class ConfigError(ValueError):
    """The config cannot work; the message names the key, the value and what to do."""


def check_data(data: dict, generated: bool = False) -> None:
    """Stop early when the data section points nowhere (`generated`: the workflow makes the data)."""
    pattern = data.get("patient_pattern", DEFAULT_PATIENT_PATTERN)
    try:
        groups = re.compile(pattern).groupindex
    except re.error as error:
        raise ConfigError(f"data.patient_pattern: '{pattern}' is not a valid regular expression ({error})") from None
    if "patient" not in groups:
        raise ConfigError(
            f"data.patient_pattern: '{pattern}' has no group named 'patient'; write it as "
            f"'^(?P<patient>.+)_(?:left|right)$' so that both eyes of a patient stay in one fold"
        )
    if data.get("layout", "folders") == "csv":
        for key in ("images_dir", "labels_csv"):
            if not data.get(key):
                raise ConfigError(f"data.{key} must be set when data.layout is 'csv'")
        if not Path(data["images_dir"]).is_dir():
            raise ConfigError(f"data.images_dir: folder not found: '{data['images_dir']}'")
        if not Path(data["labels_csv"]).is_file():
            raise ConfigError(f"data.labels_csv: file not found: '{data['labels_csv']}'")
    elif not generated:
        root = data.get("root")
        if not root:
            raise ConfigError(
                "data.root is not set: point it at the folder that holds train/<class folder>/ "
                "(the seed's --path): edit config/config.yaml, or add --config \"data={'root': '/data/dr'}\""
            )
        train = Path(root) / data.get("train_dir", "train")
        if not train.is_dir():
            raise ConfigError(
                f"data.root: '{root}' has no '{data.get('train_dir', 'train')}/' folder "
                f"(looked for '{train}'); expected train/<class folder>/*.jpeg as in the seed's --path"
            )
        missing = [name for name in data["class_folders"] if not (train / name).is_dir()]
        if len(missing) == len(data["class_folders"]):
            raise ConfigError(
                f"data.class_folders: none of {data['class_folders']} exists in '{train}'; "
                f"found {sorted(p.name for p in train.iterdir() if p.is_dir())}"
            )
    if data.get("test_dir") and not generated and not Path(data["test_dir"]).is_dir():
        raise ConfigError(f"data.test_dir: folder not found: '{data['test_dir']}'")


def check_keys(config: dict, schema: dict, where: str = "") -> None:
    """Stop at the first key the schema does not know, suggesting the closest known one.

    The schema validation would also reject it, but inside a dump of the whole schema; this
    message names the key, its place and what was probably meant (``learning_rate`` -> ``lr``).
    """
    known = schema.get("properties", {})
    entries = schema.get("additionalProperties")
    for key, value in config.items():
        place = f"{where}{key}"
        if key in known:
            child = known[key]
        elif isinstance(entries, dict):
            child = entries  # a free-named entry, such as one experiment
        elif entries is False:
            close = _likely_key(str(key), list(known))
            raise ConfigError(
                f"{place}: unknown key"
                + (f"; did you mean '{close}'?" if close else "")
                + f" Known keys{f' of {where[:-1]}' if where else ''}: {', '.join(known)}"
            )
        else:
            continue
        if isinstance(value, dict) and child.get("type") == "object":
            check_keys(value, child, f"{place}.")


def _likely_key(key: str, known: list[str]) -> str | None:
    """The known key meant by `key`: its initials (``learning_rate`` -> ``lr``) or the closest spelling."""
    initials = "".join(word[0] for word in key.lower().split("_") if word)
    if len(initials) > 1 and initials in known:
        return initials
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return close[0] if close else None


def check_scan(images: pd.DataFrame, skipped: pd.DataFrame, data: dict) -> None:
    """Stop before planning anything when the data folders hold no usable training image."""
    if (images["split"] == "train").any():
        return
    if data.get("layout", "folders") == "csv":
        place = f"data.images_dir '{data['images_dir']}' (labels from '{data['labels_csv']}')"
    else:
        place = f"data.root '{data['root']}', folders {data.get('train_dir', 'train')}/<class folder>"
    found = (
        f"; the {len(skipped)} files found were all left out, e.g. "
        + "; ".join(f"{path}: {reason}" for path, reason in skipped[["path", "reason"]].head(3).itertuples(index=False))
        if len(skipped)
        else "; no files at all"
    )
    raise ConfigError(f"no usable training images in {place}{found}. Check the path and data.class_folders.")


def resolve_experiment(name: str, entry: dict, n_classes: int | None = None) -> dict:
    """An experiment entry with model-dependent defaults filled in (input size, normalisation)."""
    if not re.fullmatch(EXPERIMENT_NAME, name):
        raise ConfigError(f"experiments.{name}: names may use letters, digits, '_', '.', '-' only")
    try:
        defaults = model_defaults(entry["model"])
    except UnknownModel as error:
        raise ConfigError(f"experiments.{name}.model: {error}") from None
    resolved = dict(entry)
    resolved.setdefault("image_size", defaults.input_size)
    if resolved.get("image_size") in (None, "auto"):
        resolved["image_size"] = defaults.input_size
    resolved.setdefault("mean", list(defaults.mean))
    resolved.setdefault("std", list(defaults.std))
    if resolved.get("preprocessing", "none") not in PREPROCESSING:
        raise ConfigError(
            f"experiments.{name}.preprocessing: '{resolved['preprocessing']}' is not one of {PREPROCESSING}"
        )
    if entry["model"] == "inception_v3" and int(resolved["image_size"]) < 75:
        raise ConfigError(f"experiments.{name}.image_size: inception_v3 needs at least 75 px")
    if entry["model"] == "inception_v3" and resolved.get("aux_loss_weight", 0.4) > 0 and resolved["image_size"] < 299:
        raise ConfigError(
            f"experiments.{name}.image_size: inception_v3's auxiliary head needs at least 299 px; "
            f"set aux_loss_weight: 0 to train smaller images without it"
        )
    if entry["model"].startswith("vit_") and resolved["image_size"] != defaults.input_size:
        raise ConfigError(
            f"experiments.{name}.image_size: torchvision's {entry['model']} takes only its native "
            f"{defaults.input_size} px; leave image_size unset"
        )
    if resolved.get("warmup_epochs", 0) >= resolved.get("epochs", 20):
        raise ConfigError(
            f"experiments.{name}.warmup_epochs: {resolved['warmup_epochs']} warm-up epochs leave none of the "
            f"{resolved.get('epochs', 20)} epochs at the full lr; lower warmup_epochs or raise epochs"
        )
    class_weights = resolved.get("class_weights")
    if isinstance(class_weights, list) and not any(class_weights):
        raise ConfigError(f"experiments.{name}.class_weights: all weights are 0, so nothing would be learned")
    if isinstance(class_weights, list) and n_classes is not None and len(class_weights) != n_classes:
        raise ConfigError(
            f"experiments.{name}.class_weights: {len(class_weights)} weights for {n_classes} classes "
            f"(data.class_folders); give one weight per class, or 'balanced'"
        )
    weights = resolved.get("weights", "imagenet")
    if weights not in ("imagenet", "none", None) and not Path(weights).is_file():
        raise ConfigError(f"experiments.{name}.weights: '{weights}' is neither 'imagenet', 'none' nor an existing file")
    return resolved
