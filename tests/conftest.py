"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD-1.5-shaped diffusers checkpoint (safetensors), saved once per test session."""
    from tokenflow.testing.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-sd15") / "model")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tf_tiny_model_dir: Path):
    """``tf_tiny_model`` (the tiny SD-shaped model on the CPU, float32), loaded once per session
    with its file-hash memo in a temporary directory instead of ~/.cache."""
    import torch

    from tokenflow.models import load_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENFLOW_HASH_CACHE", str(tmp_path_factory.mktemp("hash-memo")))
        return load_model(str(tf_tiny_model_dir), device="cpu", dtype=torch.float32)
