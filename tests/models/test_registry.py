"""The model registry: names, configs, errors."""

from __future__ import annotations

import json

import pytest

from open_buildings.errors import ConfigError
from open_buildings.models import CHANNELS, build_model, describe_models, get_entry, list_models
from open_buildings.models.registry import format_models_table


def test_the_required_families_are_registered() -> None:
    names = list_models()
    for required in (
        "unet_tiny",
        "unet_resnet18",
        "unet_resnet34",
        "unet_efficientnet_lite0",
        "unet_mit_b0",
    ):
        assert required in names
    assert names == sorted(names)


def test_unknown_name_lists_valid_ones_and_suggests() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'unet_resnet34'") as info:
        get_entry("unet_resnet43")
    assert isinstance(info.value, ValueError)
    for name in list_models():
        assert name in str(info.value)


def test_unknown_override_names_the_valid_keys() -> None:
    with pytest.raises(ConfigError, match="did you mean 'encoder_depth'") as info:
        build_model("unet_tiny", encoder_dept=3)
    assert "decoder_channels" in str(info.value)


def test_overrides_and_config_round_trip_through_json() -> None:
    model = build_model("unet_tiny", decoder_channels=[16, 8, 8])
    assert model.config["decoder_channels"] == [16, 8, 8]
    config = json.loads(json.dumps(model.config))
    again = build_model("unet_tiny", **config)
    assert again.config == model.config
    assert again.num_parameters() == model.num_parameters()


def test_inconsistent_config_is_an_error() -> None:
    with pytest.raises(ConfigError, match="one entry per encoder stage"):
        build_model("unet_tiny", decoder_channels=[8, 8])


def test_entry_contract() -> None:
    entry = get_entry("unet_resnet34")
    assert entry.output_channels == CHANNELS
    assert entry.input_spec.divisor == 32
    assert entry.input_spec.pixel_size_m == 0.5
    assert len(entry.input_spec.mean) == entry.input_spec.bands == 3


def test_describe_and_table() -> None:
    rows = {r["name"]: r for r in describe_models()}
    assert set(rows) == set(list_models())
    assert rows["unet_tiny"]["params"] < rows["unet_resnet34"]["params"]
    assert rows["unet_resnet34"]["channels"] == list(CHANNELS)
    table = format_models_table(list(rows.values()))
    assert "unet_mit_b0" in table and "M " in table
