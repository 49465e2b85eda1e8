"""The example third-party editor package (examples/plugins/tokenflow-localblend), installed for
real: into a fresh venv holding tokenflow's wheel, with ``tf install``; listed, run end to end,
tested with its own tests (which get tokenflow's pytest fixtures through the pytest11 entry
point), and removed with ``tf uninstall``."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest
from helpers_venv import (
    BUILD_LITTER,
    ROOT,
    build_tokenflow_wheel,
    clean_env,
    make_venv,
    run,
)


PACKAGE = ROOT / "examples" / "plugins" / "tokenflow-localblend"
CLIP = ROOT / "examples" / "clips" / "rolling_ball.mp4"
EP_NAME = "tokenflow_localblend.editor"


def test_the_package_declares_its_module_as_an_entry_point() -> None:
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert (project["name"], project["version"]) == ("tokenflow-localblend", "0.1.0")
    assert project["entry-points"]["tokenflow"] == {EP_NAME: EP_NAME}
    assert project["dependencies"] == ["tokenflow"]
    assert (PACKAGE / "tokenflow_localblend" / "editor.py").is_file()


@pytest.mark.slow
def test_tf_install_runs_tests_and_uninstalls_the_example_package(tmp_path: Path) -> None:
    env = clean_env(TOKENFLOW_HASH_CACHE=str(tmp_path / "hash-memo"))
    venv = make_venv(tmp_path, env, build_tokenflow_wheel(tmp_path, env), with_pip=True)
    python, tf = venv / "bin" / "python", venv / "bin" / "tf"
    # Installed from a copy: pip builds a local project in place, and its build/ and egg-info
    # would land in the checkout.
    package = tmp_path / "tokenflow-localblend"
    shutil.copytree(PACKAGE, package, ignore=BUILD_LITTER)

    installed = run([tf, "install", package], cwd=tmp_path, env=env)
    assert installed.code == 0, installed.err
    assert f"installed tokenflow-localblend 0.1.0: plugins {EP_NAME}; stages: editor localblend" \
        in installed.out
    where = run([python, "-c", "import tokenflow_localblend.editor as m; print(m.__file__)"],
                cwd=tmp_path, env=env)
    assert Path(where.out.strip()).is_relative_to(venv), where.out + where.err

    listed = run([tf, "plugins"], cwd=tmp_path, env=env)
    assert listed.code == 0, listed.err
    (line,) = [ln for ln in listed.out.splitlines() if ln.split()[0] == EP_NAME]
    assert "[tokenflow-localblend 0.1.0]" in line and "register_editors" in line
    stages = run([tf, "stages"], cwd=tmp_path, env=env)
    assert stages.code == 0, stages.err
    assert f"  localblend (v1, {EP_NAME} (tokenflow-localblend 0.1.0))" in stages.out
    assert "      words: comma-separated list = ()" in stages.out

    args = [tf, "run", CLIP, "--inversion-prompt", "a red ball on wood",
            "--prompt", "a blue ball on sand", "--editor", "localblend", "--steps", "4",
            "--inversion-steps", "4", "--frames", "4", "--batch-size", "2", "--quiet",
            "--cache-dir", tmp_path / "cache"]
    edited = run([*args, "-o", "editor.words", "ball", "--out", tmp_path / "out"], cwd=tmp_path,
                 env=env)
    assert edited.code == 0, edited.err
    assert edited.out.strip() == str(tmp_path / "out")
    assert (tmp_path / "out" / "edited.mp4").stat().st_size > 0
    assert '"name": "localblend"' in (tmp_path / "out" / "run.json").read_text()

    # The package's own tests, on the installed package (the copied tests import it from the
    # venv, not from a source tree) with tokenflow's fixtures from its pytest11 entry point.
    tests = tmp_path / "package-tests"
    shutil.copytree(PACKAGE / "tests", tests / "tests", ignore=BUILD_LITTER)
    tested = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=tests,
                 env=env)
    assert tested.code == 0, tested.out[-3000:] + tested.err[-2000:]
    summary = tested.out.strip().splitlines()[-1]
    # all pass, with nothing skipped or expected to fail (the embedded-model test included)
    assert re.fullmatch(r"\d+ passed in [\d.]+s", summary), summary

    removed = run([tf, "uninstall", "tokenflow-localblend"], cwd=tmp_path, env=env)
    assert removed.code == 0, removed.err
    assert f"uninstalled tokenflow-localblend 0.1.0: plugins {EP_NAME}" in removed.out
    listed = run([tf, "plugins"], cwd=tmp_path, env=env)
    assert listed.code == 0 and "tokenflow_plugins.pnp" in listed.out, listed.err
    assert EP_NAME not in listed.out and "localblend" not in listed.out
    gone = run([*args, "-o", "editor.words", "ball", "--out", tmp_path / "out-2"], cwd=tmp_path,
               env=env)
    assert gone.code == 2 and "Traceback" not in gone.err  # a usage error, after click's usage
    (error,) = [ln for ln in gone.err.splitlines() if ln.startswith("Error")]
    assert error.startswith("Error: unknown editor 'localblend'; installed: "), gone.err
    assert "pnp" in error
    assert not (tmp_path / "out-2").exists()
