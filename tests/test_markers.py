"""The ``gpu`` and ``fullsize`` markers of tokenflow's pytest plugin (``tokenflow.testing``), seen
from an inner pytest session in a directory without tokenflow's pyproject: only the plugin (an
entry point, loaded as it is for a third-party package's tests) declares and applies them."""

from __future__ import annotations

import pytest
import torch

from tokenflow.testing import FULLSIZE_ENV

pytest_plugins = ["pytester"]

INNER = """
import os
import pytest

@pytest.mark.gpu
def test_on_cuda():
    assert os.environ.get("INNER_EXPECT_RUN") == "gpu"

@pytest.mark.fullsize
def test_on_full_weights():
    assert os.environ.get("INNER_EXPECT_RUN") == "fullsize"

@pytest.mark.fullsize
def test_fixture(tf_fullsize_model_dir):
    assert str(tf_fullsize_model_dir) == os.environ["{env}"]

def test_plain():
    pass
""".replace("{env}", FULLSIZE_ENV)


def _run(pytester: pytest.Pytester):
    pytester.makepyfile(test_inner=INNER)
    return pytester.runpytest_inprocess("-rs", "--strict-markers", "-p", "no:cacheprovider")


def test_without_cuda_or_weights_both_are_skipped_with_a_reason(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(FULLSIZE_ENV, raising=False)
    monkeypatch.delenv("INNER_EXPECT_RUN", raising=False)
    result = _run(pytester)
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines([
        "SKIPPED [[]1[]] test_inner.py:*: gpu: needs a CUDA device*",
        f"SKIPPED [[]1[]] test_inner.py:*: fullsize: needs full-size Stable Diffusion weights; "
        f"set {FULLSIZE_ENV}*",
    ])


def test_with_cuda_the_gpu_test_runs(pytester: pytest.Pytester,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv(FULLSIZE_ENV, raising=False)
    monkeypatch.setenv("INNER_EXPECT_RUN", "gpu")
    result = _run(pytester)
    result.assert_outcomes(passed=2, skipped=2)


def test_with_weights_the_fullsize_tests_run(pytester: pytest.Pytester,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(FULLSIZE_ENV, str(pytester.path / "sd"))
    monkeypatch.setenv("INNER_EXPECT_RUN", "fullsize")
    result = _run(pytester)
    result.assert_outcomes(passed=3, skipped=1)


def test_the_plugin_declares_its_markers(pytester: pytest.Pytester) -> None:
    """For a plugin's own test suite, which has no tokenflow pyproject (``--strict-markers``
    cannot show this in process: pytest remembers markers across inner sessions)."""
    config = pytester.parseconfigure()
    declared = {line.split(":")[0].strip() for line in config.getini("markers")}
    assert {"gpu", "fullsize", "slow"} <= declared
