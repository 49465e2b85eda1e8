"""Fast errors and exit codes (issue 12): every check that needs no model (paths, sizes, stages,
parameter names, types and ranges, plugin options, the timestep grids, the output folder) runs
before torch and the model load; usage errors exit 2, other errors 1, Ctrl-C 130. The timing is
``benchmarks/fast_errors.py``; here, each refusal is shown to come before the model loads (the
loading is made to fail) and, in a fresh process, before torch is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import CliWorld, cli_env

import tokenflow.api
from tokenflow.params import Params
from tokenflow.stages import StageError
from tokenflow.testing import fake_stage, stage_plugin, synthetic_frames
from tokenflow.video import write_frames

SETTINGS = ["--steps", "4", "--inversion-steps", "4", "--frames", "5", "--batch-size", "3",
            "--size", "64"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tf_tiny_model_dir: Path) -> CliWorld:
    root = tmp_path_factory.mktemp("fast-errors")
    write_frames(root / "clip", synthetic_frames())
    return CliWorld(root=root, clip=root / "clip", model=Path(tf_tiny_model_dir),
                    cache=root / "cache", env=cli_env(root, TOKENFLOW_DEBUG=None),
                    settings=SETTINGS)


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # more tf run arguments
    needles: tuple[str, ...]
    run: dict | None = None  # CliWorld.run keywords; "{tmp}" in a path: the test's directory


def _settings(**given: str) -> list[str]:
    settings = list(SETTINGS)
    for flag, value in given.items():
        settings[settings.index(f"--{flag.replace('_', '-')}") + 1] = value
    return settings


CASES = [
    Case("missing-video", (), ("no such file or directory", "nope.mp4"), {"video": "{tmp}/nope.mp4"}),
    Case("unsupported-file", (), ("unsupported file type '.txt'",), {"video": "{tmp}/notes.txt"}),
    Case("zero-size", (), ("--size", "sides must be positive"), {"settings": _settings(size="0")}),
    Case("size-syntax", (), ("--size", "expected N or WxH"), {"settings": _settings(size="12x")}),
    Case("unknown-option", ("-o", "nosuch", "1"), ("-o nosuch", "valid:", "editor.guidance_scale")),
    Case("option-type", ("-o", "guidance_scale", "abc"), ("guidance_scale", "expected float", "'abc'")),
    Case("option-range", ("-o", "pnp_attn_t", "2"), ("pnp_attn_t must be between 0 and 1",)),
    Case("option-contradicts-a-stage", ("-o", "features.conv_t", "0.1"),
         ("features.conv_t=0.1 contradicts editor 'pnp'",)),
    Case("unknown-stage", ("--stage", "keyframes=nosuch"), ("nosuch", "installed: random")),
    Case("unknown-editor", ("--editor", "nosuch"), ("nosuch", "installed: controlnet, pnp")),
    Case("plugin-option-missing", ("--editor", "controlnet"), ("needs -o controlnet",)),
    Case("plugin-option-unknown", ("--editor", "controlnet", "-o", "controlnet", "x",
                                   "-o", "control", "nosuch"), ("unknown control extractor 'nosuch'",)),
    Case("inversion-grid", (), ("--inversion-steps 150 does not fit --steps 50",
                                "works with --inversion-steps 50, 99-100, 197-200"),
         {"settings": _settings(steps="50", inversion_steps="150")}),
    Case("steps-1000", (), ("--steps 1000", "use at most 999 steps"),
         {"settings": _settings(steps="1000", inversion_steps="1000")}),
    Case("out-is-a-file", (), ("is a file, not a directory",), {"out": "{tmp}/notes.txt"}),
    Case("out-holds-other-files", (), ("holds another result", "--overwrite"), {"out": "{tmp}"}),
    Case("cache-dir-is-a-file", (), ("--cache-dir", "is a file"), {"cache": "{tmp}/notes.txt"}),
    Case("model-missing", (), ("nope", "does not exist"), {"model": "{tmp}/nope"}),
    Case("model-not-a-checkpoint", (), ("not a diffusers Stable Diffusion checkpoint",),
         {"model": "{tmp}"}),
    Case("empty-prompt", (), ("--prompt is empty",), {"prompt": " "}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_refused_before_the_model_loads(world: CliWorld, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     case: Case) -> None:
    def loading(*args, **kwargs):
        raise AssertionError("the model would load before the refusal")

    monkeypatch.setattr(tokenflow.api, "prepare", loading)
    (tmp_path / "notes.txt").write_text("not a video")
    kwargs = {k: Path(v.replace("{tmp}", str(tmp_path))) if isinstance(v, str) and "{tmp}" in v
              else v for k, v in (case.run or {}).items()}
    kwargs.setdefault("cache", tmp_path / "cache")
    kwargs.setdefault("out", tmp_path / "out")
    result = world.run(*case.args, **kwargs)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in case.needles:
        assert needle in errors[0], (needle, errors[0])
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["invert", "compare"])
def test_invert_and_compare_check_the_video_before_the_model_loads(
        world: CliWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    def loading(*args, **kwargs):
        raise AssertionError("the model would load before the refusal")

    monkeypatch.setattr(tokenflow.api, "prepare", loading)
    extra = ["--prompt", "x", "--out", str(tmp_path / "out")] if command == "compare" else []
    result = world.invoke(command, str(tmp_path / "nope.mp4"), *extra, "--model", str(world.model),
                          "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 2, result.output
    assert "Error: no such file or directory" in result.output


def test_the_checks_and_tf_stages_model_do_not_import_torch(world: CliWorld, tmp_path: Path) -> None:
    """In a fresh process: refusals of bad input, and ``tf stages --model``, import no torch."""
    calls = [["run", str(tmp_path / "nope.mp4"), "--prompt", "x"],
             ["run", str(world.clip), "--prompt", "x", "--model", str(world.model), "-o", "nosuch", "1"],
             ["run", str(world.clip), "--prompt", "x", "--steps", "50", "--inversion-steps", "150"],
             ["run", str(world.clip), "--prompt", "x", "--editor", "controlnet", "-o", "controlnet", ""],
             ["stages", "--model", "embedded"]]
    code = ("import json, sys\nfrom click.testing import CliRunner\nfrom tokenflow.cli import cli\n"
            f"codes = [CliRunner().invoke(cli, args).exit_code for args in {calls!r}]\n"
            "print(json.dumps({'codes': codes, 'torch': 'torch' in sys.modules}))\n")
    env = {k: v for k, v in world.env.items() if v is not None}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, **env}, cwd=tmp_path, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"codes": [2, 2, 2, 2, 0], "torch": False}, done.stderr


# --------------------------------------------------------------------------------------------- checks


def _check_early(self, config) -> None:
    raise StageError(f"early: no model needed for {config.steps} steps")


def _check_late(self, model) -> None:
    raise StageError(f"late: {model.model_id} is loaded")


@pytest.mark.parametrize("editor, loads", [("early", False), ("late", True)])
def test_a_stage_check_without_model_runs_before_the_model_loads(
        tf_plugin_manager, tf_register, tf_video: Path, tf_tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, editor: str, loads: bool) -> None:
    early = fake_stage("editor", "early", check=_check_early, Params=Params)
    late = fake_stage("editor", "late", check=_check_late, Params=Params)
    registry = tf_register(stage_plugin(early, late))
    prepared = []
    prepare = tokenflow.api.prepare

    def spy(*args, **kwargs):
        prepared.append(True)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(tokenflow.api, "prepare", spy)
    with pytest.raises(tokenflow.api.EditError) as info:
        tokenflow.api.edit(tf_video, prompt="a square", editor=editor, model=str(tf_tiny_model_dir),
                           steps=2, inversion_steps=2, size="64", cache_dir=tmp_path / "cache",
                           pm=tf_plugin_manager, registry=registry)
    assert str(info.value).startswith(f"{editor}: ") and info.value.usage
    assert bool(prepared) == loads


# --------------------------------------------------------------------------------------------- exit codes


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, world: CliWorld,
          *args: str) -> tuple[int, str]:
    from tokenflow.cli import main

    for name, value in world.env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["tf", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def test_exit_codes_usage_2_other_errors_1_ctrl_c_130(world: CliWorld, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    common = ["--prompt", "a blue ball", "--model", str(world.model), *SETTINGS,
              "--cache-dir", str(tmp_path / "cache")]
    code, err = _main(monkeypatch, capsys, world, "run", str(tmp_path / "nope.mp4"), *common)
    assert code == 2 and err.startswith("Error: no such file or directory"), err

    noise = tmp_path / "noise.mp4"  # a path that exists, of a file that is not a video
    noise.write_bytes(bytes(range(256)) * 64)
    code, err = _main(monkeypatch, capsys, world, "run", str(noise), *common)
    assert code == 1 and err.startswith("Error: cannot read video"), err

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenflow.run.Job, "run", interrupted)
    code, err = _main(monkeypatch, capsys, world, "run", str(world.clip), *common,
                      "--out", str(tmp_path / "out"))
    assert code == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted"), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
