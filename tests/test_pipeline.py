"""Planning a run: stage choice, the precedence of parameters, and what downstream stages impose."""

from __future__ import annotations

import pytest

from tokenflow.manager import make_plugin_manager
from tokenflow.plan import plan
from tokenflow.registry import build_registry
from tokenflow.params import ParamError
from tokenflow.stages import RunConfig


@pytest.fixture(scope="module")
def registry():
    return build_registry(make_plugin_manager())


def test_model_defaults_are_the_weakest(registry) -> None:
    defaults = {"editor.guidance_scale": 2.5, "editor.negative_prompt": "",
                "inversion.inversion_steps": 50, "editor.conv_layers": ["up_blocks.2.resnets.1"],
                "blender.no_such_param": 1, "nosuchkind.x": 2}
    stages = plan(registry, RunConfig(), defaults=defaults)
    assert stages["editor"].params.guidance_scale == 2.5
    assert stages["editor"].params.negative_prompt == ""
    assert stages["inversion"].params.inversion_steps == 50
    # the editor's conv layers reach the feature store through upstream_params
    assert stages["editor"].params.conv_layers == ("up_blocks.2.resnets.1",)
    assert stages["features"].params.conv_layers == ("up_blocks.2.resnets.1",)
    flags = plan(registry, RunConfig(), defaults=defaults,
                 params={"editor": {"guidance_scale": 6.0, "negative_prompt": None}})
    assert flags["editor"].params.guidance_scale == 6.0  # a flag beats the model's default
    assert flags["editor"].params.negative_prompt == ""  # an unset flag does not
    options = plan(registry, RunConfig(), defaults=defaults,
                   params={"editor": {"guidance_scale": 6.0}}, options=[("guidance_scale", "3")])
    assert options["editor"].params.guidance_scale == 3.0  # -o beats both


def test_without_defaults_the_released_values_hold(registry) -> None:
    stages = plan(registry, RunConfig())
    p = stages["editor"].params
    assert (p.guidance_scale, p.pnp_attn_t, p.pnp_f_t) == (7.5, 0.5, 0.8)
    assert p.negative_prompt == "ugly, blurry, low res, unrealistic, unaesthetic"
    assert p.conv_layers == ("up_blocks.1.resnets.1",)
    assert stages["inversion"].params.inversion_steps == 500
    assert stages["features"].params.conv_t == 0.8


def test_contradicting_an_imposed_parameter_is_an_error(registry) -> None:
    with pytest.raises(ParamError, match="contradicts"):
        plan(registry, RunConfig(), options=[("features.conv_t", "0.3")])
    with pytest.raises(ParamError, match="ambiguous"):
        plan(registry, RunConfig(), options=[("conv_layers", "up_blocks.2.resnets.1")])


def test_invert_plans_only_inversion_and_features(registry) -> None:
    assert list(plan(registry, RunConfig(), until="features")) == ["inversion", "features"]
    assert list(plan(registry, RunConfig(), choices={"editor": "pnp-frames"})) == [
        "inversion", "features", "editor", "blender"]
