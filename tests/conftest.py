"""Shared pytest fixtures of tokenflow's own tests (beside those of ``tokenflow.testing``, which
every test gets: ``tf_tiny_model``, ``tf_tiny_model_dir``, ``tf_register``, ...)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A cache directory shared by the tests of one module: what one test computed, the next
    finds there."""
    return tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_")) / "cache"
