"""The feature store's default encoding (``tokenflow.cache.quantized``): int8 tokens on a grid
given by each block's norm1, delta-coded over several timesteps, read back with the grid; and
the cache budget note."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from torch import nn

from tokenflow import TOKEN_DIMS, FeatureReader, Int8Grid
from tokenflow.cache.store import dir_size
from tokenflow.testing import make_job, synthetic_frames


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn1 = nn.Module()
        self.attn1.to_q = nn.Linear(channels, channels)


def _unet(gamma: torch.Tensor, beta: torch.Tensor) -> nn.Module:
    unet = nn.Module()
    unet.block = _Block(len(gamma))
    with torch.no_grad():
        unet.block.norm1.weight.copy_(gamma)
        unet.block.norm1.bias.copy_(beta)
    return unet


def test_the_grid_is_each_channels_layernorm_scale_over_the_levels() -> None:
    gamma = torch.tensor([2.0, -0.5, 1.0, 0.0])
    beta = torch.tensor([0.1, -1.0, 0.0, 3.0])
    grid = Int8Grid.for_tokens(_unet(gamma, beta), ["block.attn1"], levels=16)
    assert grid.scale.shape == grid.offset.shape == (1, 4)
    np.testing.assert_allclose(grid.scale[0, :3], [2 / 16, 0.5 / 16, 1 / 16])
    assert 0 < grid.scale[0, 3] < 1e-3  # gamma 0: a floor, never a division by zero
    np.testing.assert_allclose(grid.offset[0], beta.numpy())


def test_quantized_tokens_are_within_half_a_step_and_clipped_values_are_counted() -> None:
    gamma, beta = torch.tensor([2.0, 0.5, 1.0]), torch.tensor([0.3, -1.0, 0.0])
    grid = Int8Grid.for_tokens(_unet(gamma, beta), ["block.attn1"], levels=16)
    tokens = torch.randn(5, 7, 3, generator=torch.Generator().manual_seed(0)) * gamma + beta
    q, clipped = grid.quantize("block.attn1", tokens)
    assert q.dtype == np.int8 and q.shape == (5, 7, 3) and clipped == 0
    back = q.astype(np.float32) * grid.scale[0] + grid.offset[0]
    assert np.all(np.abs(back - tokens.numpy()) <= grid.scale[0] / 2 + 1e-6)
    far = tokens.clone()
    far[0, 0, 0] = beta[0] + 9 * gamma[0]  # 144 steps from the centre: past int8
    _, clipped = grid.quantize("block.attn1", far)
    assert clipped == 1


def test_levels_outside_their_range_are_refused() -> None:
    with pytest.raises(ValueError, match="levels"):
        Int8Grid.for_tokens(_unet(torch.ones(2), torch.zeros(2)), ["block.attn1"], levels=0)


@pytest.mark.parametrize("shape", [(6, 3, 2, 1, 8), (6, 1, 1, 1, 8), (6, 3, 1, 4, 8),
                                   (1, 2, 1, 4, 8)])
def test_every_chunk_layout_reads_back_what_was_written(shape, tmp_path) -> None:
    """Chunks of one frame of a one-token layer (SD's 8x8 mid block at 64x64 pixels) are the case
    numcodecs' delta gets wrong after a transpose; every layout must round-trip."""
    channels = shape[-1]
    grid = Int8Grid.for_tokens(_unet(torch.ones(channels), torch.zeros(channels)), ["block.attn1"])
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    arr = grid.create(group, TOKEN_DIMS, shape, span=5, most_frames=1)
    data = np.random.default_rng(0).integers(-127, 128, size=shape, dtype=np.int8)
    for t0 in range(0, shape[0], 5):
        for f in range(shape[1]):
            arr[t0:t0 + 5, f:f + 1] = data[t0:t0 + 5, f:f + 1]
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
                                  ["tokens"][...], data)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tf_tiny_model):
    """Feature stores of one clip: float32, and the default int8 (6 steps: chunks of 5 + 1; conv
    residuals kept for the first 4, int(0.8 * 6): chunks of 4)."""
    from tokenflow.manager import make_plugin_manager

    pm = make_plugin_manager()
    frames = synthetic_frames(5, 64, 64)
    cache = tmp_path_factory.mktemp("token-store")
    out = {}
    for name, options in (("float32", [("features.dtype", "float32")]), ("int8", [])):
        job = make_job(pm, tf_tiny_model, frames, cache=cache, steps=6, batch_size=2,
                       params={"inversion": {"inversion_steps": 6}}, options=options,
                       until="features")
        job.run()
        result = job.results["features"]
        out[name] = SimpleNamespace(path=result.path, stats=result.stats,
                                    store=zarr.open_group(str(result.path), mode="r"))
    return out


def test_int8_tokens_read_back_within_half_a_step_of_float32(stores) -> None:
    exact = FeatureReader(stores["float32"].store)
    coded = FeatureReader(stores["int8"].store)
    assert stores["int8"].stats["int8_clipped"] == 0
    for layer in coded.layers:
        group = stores["int8"].store[coded.groups[layer]]
        i = [str(x) for x in group["layer"][...]].index(layer)
        half = np.asarray(group["tokens_scale"][i]) / 2
        for step in range(len(coded.timesteps)):
            a = exact.tokens(step, layer, range(5)).numpy()
            b = coded.tokens(step, layer, range(5)).numpy()
            assert b.dtype == np.float32 and b.shape == a.shape
            assert np.all(np.abs(a - b) <= half + 1e-5), (layer, step)


def test_int8_conv_residuals_read_back_within_half_a_step_of_float32(stores) -> None:
    exact = FeatureReader(stores["float32"].store)
    coded = FeatureReader(stores["int8"].store)
    assert coded.conv_layers and coded.conv_steps == exact.conv_steps == 4
    for path in coded.conv_layers:
        group = stores["int8"].store[coded.groups[path]]
        i = [str(x) for x in group["conv_layer"][...]].index(path)
        half = np.asarray(group["conv_scale"][i])[None, :, None, None] / 2
        for step in range(coded.conv_steps):
            a = exact.conv(step, path, range(5)).numpy()
            b = coded.conv(step, path, range(5)).numpy()
            assert b.shape == a.shape and np.all(np.abs(a - b) <= half + 1e-5), (path, step)


def test_int8_chunks_span_timesteps_and_are_delta_coded(stores) -> None:
    from zarr.codecs import TransposeCodec

    store = stores["int8"].store
    for name in {g for g in store.attrs["groups"].values()}:
        arr = store[name]["tokens"]
        assert arr.dtype == np.int8 and arr.chunks[0] == 5 and arr.chunks[2] == 1
        codecs = arr.metadata.codecs
        assert isinstance(codecs[0], TransposeCodec) and codecs[0].order == (1, 2, 3, 4, 0)
        assert "delta" in type(codecs[1]).__name__.lower()
        assert arr.attrs["encoding"] == "tokens * tokens_scale + tokens_offset"
    for path in store.attrs["conv_layers"]:
        arr = store[store.attrs["groups"][path]]["conv"]
        assert arr.dtype == np.int8 and arr.chunks[0] == 4
        assert arr.attrs["encoding"] == "conv * conv_scale + conv_offset"
    assert dir_size(stores["int8"].path) < 0.6 * dir_size(stores["float32"].path) / 2


def test_xarray_decodes_the_int8_store_with_the_recipe_its_attributes_give(stores) -> None:
    reader = FeatureReader(stores["int8"].store)
    path = stores["int8"].path
    layer = reader.layers[-1]
    group = reader.groups[layer]
    ds = xr.open_zarr(path, group=group, consolidated=False)
    assert ds["tokens"].dims == ("timestep", "frame", "layer", "token", "channel")
    assert ds["tokens_scale"].dims == ("layer", "channel")
    tokens = ds["tokens"] * ds["tokens_scale"] + ds["tokens_offset"]  # broadcast by name
    got = tokens.sel(layer=layer).isel(timestep=3).values
    np.testing.assert_allclose(got, reader.tokens(3, layer, range(5)).numpy(), rtol=0,
                               atol=1e-6)


def test_a_run_over_the_cache_budget_says_what_shrinks_it(tf_tiny_model, tf_video,
                                                          tmp_path) -> None:
    import tokenflow

    lines: list[str] = []
    tokenflow.invert(tf_video, model=tf_tiny_model, steps=2,
                     inversion_steps=2, cache_dir=tmp_path / "a", check=False,
                     cache_budget="1K", log=lines.append)
    assert any("over the --cache-budget of 1.0 KiB" in line and "features.store_tokens false"
               in line for line in lines)
    lines.clear()
    tokenflow.invert(tf_video, model=tf_tiny_model, steps=2,
                     inversion_steps=2, cache_dir=tmp_path / "b", check=False, log=lines.append)
    assert not any("--cache-budget" in line for line in lines)


def test_a_bad_cache_budget_is_a_usage_error(tf_tiny_model, tf_video, tmp_path) -> None:
    import tokenflow

    with pytest.raises(tokenflow.EditError, match="--cache-budget: 'lots' is not a size") as err:
        tokenflow.invert(tf_video, model=tf_tiny_model, steps=2,
                         inversion_steps=2, cache_dir=tmp_path, check=False, cache_budget="lots")
    assert err.value.usage


def test_sizes_are_printed_in_the_binary_units_the_budget_reads() -> None:
    from tokenflow.preflight import human_bytes, parse_bytes

    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(16 * 2**30) == "16.0 GiB"
    assert human_bytes(3 * 2**50) == "3072.0 TiB"
    for n in (2**20, 5 * 2**30, 7 * 2**40):  # what a run prints, given back as a budget
        assert parse_bytes(human_bytes(n)) == n
