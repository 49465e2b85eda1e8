"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD-1.5-shaped diffusers checkpoint (safetensors), saved once per test session."""
    from tokenflow.models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-sd15") / "model")
