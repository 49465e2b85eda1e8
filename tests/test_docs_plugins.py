"""docs/plugins.md's tutorial, checked.

The tutorial's files are the fenced blocks preceded by ``<!-- file: PATH -->`` in the page. They
are written to a temporary directory as a package; its editor runs on the tiny model with the
effect the page describes, and its own tests pass with pytest in a subprocess; ``tf install -e``,
``tf stages`` and ``tf uninstall`` work on it.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import tomllib

from tokenflow import EDITOR, KINDS, StageBase
from tokenflow.testing import make_job, synthetic_frames

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "plugins.md"
PACKAGE = "tokenflow-myeditor"
MODULE = "tokenflow_myeditor.editor"
STEPS, BATCH = 3, 4
FILE_BLOCK = re.compile(r"^<!-- file: (?P<path>\S+) -->\n```[\w-]*\n(?P<body>.*?)^```$",
                        re.MULTILINE | re.DOTALL)


def tutorial_files() -> dict[str, str]:
    """{relative path: text} of every marked block of docs/plugins.md."""
    files: dict[str, str] = {}
    for match in FILE_BLOCK.finditer(DOCS.read_text()):
        path = match["path"]
        assert path not in files, f"{path} appears twice in docs/plugins.md"
        files[path] = match["body"]
    return files


def write_tutorial(target: Path) -> Path:
    """Write the tutorial's files under ``target``; returns the package's directory."""
    for rel, text in tutorial_files().items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return target / PACKAGE


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tutorial(tmp_path_factory.mktemp("tutorial"))


def fake_install(project: Path, site: Path) -> Path:
    """What installing ``project`` leaves for ``importlib.metadata``: a ``.dist-info`` with its
    metadata and entry points, in ``site`` (put ``site`` and ``project/src`` on the path)."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    lines = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
             for group, eps in meta.get("entry-points", {}).items()]
    (info / "entry_points.txt").write_text("\n".join(lines))
    return site


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TOKENFLOW_LOAD_PLUGINS", "TOKENFLOW_DEBUG",
                        "TOKENFLOW_CACHE_DIR", "PYTEST_ADDOPTS")}
    env.update(OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1", **extra)
    return env


# --------------------------------------------------------------------------------------------- the page


def test_the_tutorial_is_a_complete_package(tutorial: Path) -> None:
    files = tutorial_files()
    assert set(files) == {f"{PACKAGE}/pyproject.toml",
                          f"{PACKAGE}/src/tokenflow_myeditor/__init__.py",
                          f"{PACKAGE}/src/tokenflow_myeditor/editor.py",
                          f"{PACKAGE}/tests/test_editor.py"}
    project = tomllib.loads((tutorial / "pyproject.toml").read_text())["project"]
    assert project["name"] == PACKAGE
    assert project["entry-points"]["tokenflow"] == {MODULE: MODULE}  # name = module path
    for rel, text in files.items():
        if rel.endswith(".py"):
            compile(text, rel, "exec")
    text = DOCS.read_text()
    assert f"tf install -e ./{PACKAGE}" in text and f"tf uninstall {PACKAGE}" in text
    assert "--editor region -o region.keep_left 0.5" in text


# --------------------------------------------------------------------------------------------- (a) the editor


@pytest.fixture
def editor_module(tutorial: Path, monkeypatch: pytest.MonkeyPatch):
    """The tutorial's editor module, imported from its ``src`` (not installed)."""
    monkeypatch.syspath_prepend(str(tutorial / "src"))
    try:
        yield importlib.import_module(MODULE)
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "tokenflow_myeditor"]:
            del sys.modules[name]


def _job(pm, model, frames, cache, editor: str, keep_left: str | None = None, options=()):
    options = [*options, *([("region.keep_left", keep_left)] if keep_left is not None else [])]
    return make_job(pm, model, frames, cache=cache, steps=STEPS, batch_size=BATCH, editor=editor,
                    params={"inversion": {"inversion_steps": STEPS},
                            "editor": {"prompt": "a blue square"}},
                    options=options)


def _array(cache, result, name: str) -> np.ndarray:
    return np.asarray(cache.open(result.path)[name][...])


def test_the_tutorial_editor_keeps_the_source_on_the_left(editor_module, tf_register,
                                                          tf_plugin_manager, tf_tiny_model,
                                                          tf_cache) -> None:
    registry = tf_register(editor_module)
    assert registry.get(EDITOR, "region") is editor_module.RegionEditor
    assert registry.owner(EDITOR, "region") == MODULE
    frames = synthetic_frames(8, height=64, width=64)

    job = _job(tf_plugin_manager, tf_tiny_model, frames, tf_cache, "region", "0.5")
    assert job.stages[EDITOR].params.keep_left == 0.5
    results = job.run()
    source = _array(tf_cache, results["inversion"], "latents")  # (steps, N, c, h, w)
    x0 = _array(tf_cache, results["inversion"], "x0")
    edited = _array(tf_cache, results["blender"], "latents")  # after the step at each timestep
    assert edited.shape == source.shape == (STEPS, 8, 4, 8, 8)
    kept = 4  # round(0.5 * 8 latent columns)
    # after the step at grid index i: the kept columns are the inverted source at i + 1 ...
    for i in range(STEPS - 1):
        np.testing.assert_array_equal(edited[i][..., :kept], source[i + 1][..., :kept])
    # ... and the clean source latents after the last step, where the rest is edited
    np.testing.assert_array_equal(edited[-1][..., :kept], x0[..., :kept])
    assert not np.allclose(edited[-1][..., kept:], x0[..., kept:], atol=1e-3)
    assert _array(tf_cache, results["blender"], "frames").shape == (8, 64, 64, 3)

    # written from scratch, not on a built-in editor; and keep_left 0 is exactly the built-in
    # sdedit at strength 1 (a joint keyframe edit from the inverted noise, propagated), on the
    # same upstream stores
    assert editor_module.RegionEditor.__mro__[1:] == (StageBase, object)
    pnp = _job(tf_plugin_manager, tf_tiny_model, frames, tf_cache, "sdedit",
               options=[("editor.strength", "1.0")])
    none_kept = _job(tf_plugin_manager, tf_tiny_model, frames, tf_cache, "region", "0")
    upstream = [k for k in KINDS if k not in (EDITOR, "blender")]
    assert all(pnp.keys[k] == none_kept.keys[k] == job.keys[k] for k in upstream)
    assert none_kept.pending() == [EDITOR, "blender"]
    a, b = pnp.run(), none_kept.run()
    np.testing.assert_array_equal(_array(tf_cache, a["blender"], "latents"),
                                  _array(tf_cache, b["blender"], "latents"))
    np.testing.assert_array_equal(_array(tf_cache, a["blender"], "frames"),
                                  _array(tf_cache, b["blender"], "frames"))

    # the key follows keep_left, and nothing upstream
    quarter = _job(tf_plugin_manager, tf_tiny_model, frames, tf_cache, "region", "0.25")
    assert {k for k in KINDS if quarter.keys[k] != job.keys[k]} == {EDITOR, "blender"}


# --------------------------------------------------------------------------------------------- (b) its tests


def test_the_tutorials_own_tests_pass(tutorial: Path, tmp_path: Path) -> None:
    """Run ``pytest tests`` in the tutorial's package, installed as ``tf install`` would leave
    it for ``importlib.metadata`` (so that its ``tf run`` test finds the entry point)."""
    site = fake_install(tutorial, tmp_path / "site")
    env = clean_env(PYTHONPATH=os.pathsep.join([str(tutorial / "src"), str(site)]),
                    TOKENFLOW_HASH_CACHE=str(tmp_path / "hash-memo"))
    proc = subprocess.run([sys.executable, "-m", "pytest", str(tutorial / "tests"), "-q",
                           "-p", "no:cacheprovider", "-rs"], cwd=tutorial, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    own = (tutorial / "tests" / "test_editor.py").read_text()
    n_tests = len(re.findall(r"^def test_", own, re.MULTILINE))
    assert re.search(rf"^{n_tests} passed\b", proc.stdout, re.MULTILINE), output
    assert "skipped" not in proc.stdout, output


# --------------------------------------------------------------------------------------------- install, uninstall


def _run(args: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def editable_install(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``tf install -e``, ``tf stages`` and ``tf uninstall`` of the tutorial's package, each in a
    new process, in a scratch environment that sees this one's packages (nothing is installed
    here). The project has been built before, as after setuptools' default (isolated) build,
    which leaves ``src/*.egg-info``; offline, pip then builds without isolation."""
    root = tmp_path_factory.mktemp("editable")
    project = write_tutorial(root / "work")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        root, clean_env()).stdout.strip())
    outer = sysconfig.get_paths()["purelib"]
    (purelib / "_outer_site.pth").write_text(f"import site; site.addsitedir({outer!r})\n")
    env = clean_env(PIP_NO_BUILD_ISOLATION="0", PIP_NO_INDEX="1",
                    PIP_DISABLE_PIP_VERSION_CHECK="1", TOKENFLOW_HASH_CACHE=str(root / "hash-memo"))
    egg_info = _run([python, "-c", "import setuptools; setuptools.setup()", "egg_info"],
                    project, env)
    assert egg_info.returncode == 0, egg_info.stderr

    def installed() -> bool:
        return bool(list(purelib.glob("tokenflow_myeditor-*.dist-info")))

    install = _run([python, "-m", "tokenflow.cli", "install", "-e", project, "-q"], root, env)
    if not installed():
        pytest.skip(f"pip could not install the tutorial's package here: {install.stderr[-600:]}")
    stages = _run([python, "-m", "tokenflow.cli", "stages"], root, env)
    uninstall = _run([python, "-m", "tokenflow.cli", "uninstall", PACKAGE, "-q"], root, env)
    return {"install": install, "stages": stages, "uninstall": uninstall, "gone": not installed()}


@pytest.mark.slow
def test_the_editable_install_is_usable_by_the_next_command(editable_install) -> None:
    stages = editable_install["stages"]
    assert stages.returncode == 0, stages.stderr
    assert re.search(r"^  region \(v1, tokenflow_myeditor\.editor \(tokenflow-myeditor "
                     r"0\.1\.0\)\): ", stages.stdout, re.MULTILINE), stages.stdout
    assert "      keep_left: float = 0.5" in stages.stdout
    assert editable_install["gone"]  # and tf uninstall did remove it


@pytest.mark.slow
def test_tf_install_editable_lists_the_new_editor(editable_install) -> None:
    install = editable_install["install"]
    assert install.returncode == 0, install.stderr[-2000:]
    assert ("installed tokenflow-myeditor 0.1.0: plugins tokenflow_myeditor.editor; "
            "stages: editor region") in install.stdout


@pytest.mark.slow
def test_tf_uninstall_after_an_editable_install(editable_install) -> None:
    uninstall = editable_install["uninstall"]
    assert uninstall.returncode == 0, uninstall.stderr[-2000:]
    assert ("uninstalled tokenflow-myeditor 0.1.0: plugins tokenflow_myeditor.editor"
            in uninstall.stdout)
