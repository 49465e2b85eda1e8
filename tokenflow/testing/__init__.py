"""Pytest fixtures for tokenflow and its plugin authors (loaded through the ``pytest11`` entry
point, so a third-party package's tests get them by installing tokenflow).

Fixtures:

* ``tf_plugin_manager``: a fresh plugin manager with the core and entry-point plugins.
* ``tf_register``: ``tf_register(plugin_object, name=None)`` registers a plugin for one test and
  unregisters it afterwards; returns the registry rebuilt with it.
* ``tf_tiny_model_dir``: a tiny randomly initialised SD-shaped diffusers checkpoint (session).
* ``tf_tiny_model``: that checkpoint loaded on the CPU in float32 (session).
* ``tf_tiny_controlnet_dir``: a tiny ControlNet for that model's UNet (safetensors), its zero
  output convolutions given small random weights so that the control visibly acts (session).
* ``tf_video``: a path to a short synthetic clip (8 frames, 64x96, a square moving right).
* ``tf_cache``: a :class:`tokenflow.cache.StageCache` in a temporary directory.
* ``tf_fullsize_model_dir``: the full-size diffusers checkpoint named by
  ``TOKENFLOW_FULLSIZE_MODEL`` (the test is skipped when it is unset).

Markers:

* ``gpu``: the test needs CUDA; skipped, with the reason, when ``torch.cuda.is_available()`` is
  false.
* ``fullsize``: the test needs full-size Stable Diffusion weights; skipped, with the reason,
  unless the environment variable ``TOKENFLOW_FULLSIZE_MODEL`` names a diffusers directory.
* ``slow``: end-to-end runs that take more than a few seconds (informative only).

Helpers: :func:`synthetic_frames` (the ``tf_video`` clip as an array), :func:`read_frames`,
:func:`make_job` (a planned run of frames already at the working size, as ``tf run`` plans it),
:func:`build_registry`, :func:`fake_stage` (a minimal stage class of a kind) and
:func:`stage_plugin` (a plugin object registering stage classes, for ``tf_register``:
``tf_register(stage_plugin(MyEditor))``). The tiny model builders are
:mod:`tokenflow.testing.tiny`.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

#: Environment variable naming a full-size diffusers Stable Diffusion directory, for tests
#: marked ``fullsize``.
FULLSIZE_ENV = "TOKENFLOW_FULLSIZE_MODEL"


def synthetic_frames(n: int = 8, height: int = 64, width: int = 96, seed: int = 0) -> np.ndarray:
    """A textured background with a bright square moving right by 2 pixels a frame."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    frames = np.repeat(background[None], n, axis=0)
    side = max(4, height // 4)
    for i in range(n):
        x = (4 + 2 * i) % max(1, width - side)
        frames[i, height // 3: height // 3 + side, x: x + side] = (220, 40, 40)
    return frames


def read_frames(path, frames: int | None = None) -> np.ndarray:
    """The frames of a video file or frame folder, ``(N, H, W, 3)`` uint8, not resized."""
    from tokenflow.video import read_video

    return read_video(path, frames=frames).frames


def make_job(pm, model, frames: np.ndarray, *, cache, steps: int = 3, batch_size: int = 4,
             editor: str | None = None, stages=None, params=None, options=(),
             until: str = "blender", registry=None, runtime=None):
    """Plan a run of ``frames`` (used as they are: no resizing) as ``tf run`` plans it, without
    running it: a :class:`tokenflow.run.Job` whose ``keys`` are every stage's cache key;
    ``job.run()`` computes it. ``params`` are ``{kind: {param: value}}`` (the dedicated flags),
    ``options`` ``[(KEY, VALUE)]`` (``-o``); ``cache`` a directory or a StageCache."""
    from tokenflow.plan import build_job
    from tokenflow.stages import RunConfig

    choices = {**(stages or {}), **({"editor": editor} if editor else {})}
    return build_job(pm, model, frames, RunConfig(steps=steps, batch_size=batch_size),
                     cache=cache, registry=registry, choices=choices, params=params,
                     options=[tuple(o) for o in options], until=until, runtime=runtime)


def build_registry(pm):
    """The stage registry of a plugin manager (``{kind: {name: class}}`` with owners)."""
    from tokenflow.registry import build_registry as build

    return build(pm)


def fake_stage(kind: str, name: str, *, base: type | None = None, **attrs) -> type:
    """A minimal stage class of ``kind`` called ``name`` that satisfies its kind's protocol
    (every method does nothing and returns None), for registry and plugin-loading tests;
    ``attrs`` add or override class attributes (``edit_step=None`` removes a member)."""
    from tokenflow.params import Params
    from tokenflow.stages import PROTOCOLS, StageBase, protocol_members

    body: dict = {"kind": kind, "name": name, "version": 1, "requires": (), "Params": Params}
    for member in protocol_members(PROTOCOLS[kind]):
        if callable(getattr(PROTOCOLS[kind], member, None)):
            body[member] = lambda self, *args, **kwargs: None
    body.update(attrs)
    for member in [k for k, v in body.items() if v is None]:
        del body[member]
    title = name.title().replace("-", "").replace("_", "")
    return type(f"Fake{kind.title()}{title}", (base or StageBase,), body)


def stage_plugin(*classes: type, hook: str | None = None):
    """A plugin object whose one ``register_*`` hook registers ``classes``, to pass to
    ``tf_register``: the hook of the first class's kind, or ``hook`` (a hook name such as
    ``"register_editors"``) to register them under another one."""
    from tokenflow.hookspecs import hookimpl
    from tokenflow.registry import REGISTER_HOOKS

    hook_name = hook or REGISTER_HOOKS[classes[0].kind]

    def impl(self, register):
        for cls in classes:
            register(cls)

    impl.__name__ = hook_name
    return type("StagePlugin", (), {hook_name: hookimpl(impl)})()


def pytest_configure(config) -> None:
    """The markers tokenflow's own tests use, so a plugin's tests may use them too."""
    config.addinivalue_line("markers", "slow: end-to-end runs that take more than a few seconds")
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", f"fullsize: needs full-size Stable Diffusion weights "
                                       f"(skipped unless {FULLSIZE_ENV} names a directory)")


def _skip_reason(item) -> str | None:
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            return "gpu: needs a CUDA device (torch.cuda.is_available() is false)"
    if item.get_closest_marker("fullsize") is not None and not os.environ.get(FULLSIZE_ENV):
        return (f"fullsize: needs full-size Stable Diffusion weights; set {FULLSIZE_ENV} to a "
                "diffusers directory")
    return None


def pytest_collection_modifyitems(config, items) -> None:
    """Skip ``gpu`` tests without CUDA and ``fullsize`` tests without full-size weights (the
    reason is reported at the test's own location)."""
    for item in items:
        reason = _skip_reason(item)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def tf_plugin_manager():
    from tokenflow.manager import make_plugin_manager

    return make_plugin_manager()


@pytest.fixture
def tf_register(tf_plugin_manager):
    from tokenflow.registry import build_registry

    registered = []

    def register(plugin, name: str | None = None):
        tf_plugin_manager.register(plugin, name=name)
        registered.append(plugin)
        return build_registry(tf_plugin_manager)

    try:
        yield register
    finally:
        for plugin in registered:
            if tf_plugin_manager.is_registered(plugin):
                tf_plugin_manager.unregister(plugin)


@pytest.fixture(scope="session")
def tf_tiny_model_dir(tmp_path_factory):
    from tokenflow.testing.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-sd") / "model", "sd15", seed=0)


@pytest.fixture(scope="session")
def tf_tiny_model(tf_tiny_model_dir, tmp_path_factory):
    import torch

    from tokenflow.models import load_model

    with pytest.MonkeyPatch.context() as mp:  # keep the weights' hash memo out of ~/.cache
        mp.setenv("TOKENFLOW_HASH_CACHE", str(tmp_path_factory.mktemp("tf-hash-memo")))
        return load_model(str(tf_tiny_model_dir), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tf_tiny_controlnet_dir(tmp_path_factory, tf_tiny_model):
    from tokenflow.testing.tiny import save_tiny_controlnet

    return save_tiny_controlnet(tmp_path_factory.mktemp("tiny-controlnet") / "controlnet",
                                tf_tiny_model.unet, seed=0,
                                vae_scale_factor=tf_tiny_model.vae_scale_factor)


@pytest.fixture
def tf_video(tmp_path):
    from tokenflow.video import write_frames

    folder = tmp_path / "clip"
    write_frames(folder, synthetic_frames())
    return folder


@pytest.fixture(scope="session")
def tf_fullsize_model_dir():
    """The directory ``TOKENFLOW_FULLSIZE_MODEL`` names (skips the test when it is unset)."""
    from pathlib import Path

    value = os.environ.get(FULLSIZE_ENV)
    if not value:
        pytest.skip(f"fullsize: set {FULLSIZE_ENV} to a diffusers Stable Diffusion directory")
    return Path(value).expanduser()


@pytest.fixture
def tf_cache(tmp_path):
    from tokenflow.cache.store import StageCache

    return StageCache(tmp_path / "cache")
