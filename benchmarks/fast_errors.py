"""How long `tf run` takes to refuse bad input (issue 12: errors before torch and the model load).

    python benchmarks/fast_errors.py [--versions NAME=PYTHON,...] [--repeat R] [--cases a,b]

Each case is a `tf run` of ``examples/clips/rolling_ball.mp4`` on the embedded model with one thing
wrong, in its own process (``python -m tokenflow.cli``, one torch thread, OMP_WAIT_POLICY=PASSIVE,
an empty cache and output folder in a temporary directory). ``--versions
before=/work/main/.venv/bin/python,after=.venv/bin/python`` runs every case with each interpreter's
tokenflow, interleaved (the machine's load affects both alike). Prints one Markdown table: the
median wall seconds of ``--repeat`` runs (default 3), the exit code and the error line of each
version. The last case, ``dry-run``, is a good run's ``--dry-run`` (exit 0, its totals line). A
case that is still running after ``--timeout`` seconds (default 120) is killed and reported as
``>T``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import NEUTRAL_DIR  # benchmarks/measure.py (the script directory is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "examples" / "clips" / "rolling_ball.mp4"

#: name -> (what is wrong, the tf run arguments after the video; {tmp} is a scratch directory)
CASES: dict[str, tuple[str, list[str]]] = {
    "missing-video": ("VIDEO does not exist", ["--video", "{tmp}/nope.mp4"]),
    "zero-size": ("--size 0", ["--size", "0"]),
    "size-syntax": ("--size 12x", ["--size", "12x"]),
    "unknown-option": ("-o nosuch 1", ["-o", "nosuch", "1"]),
    "option-type": ("-o guidance_scale abc", ["-o", "guidance_scale", "abc"]),
    "option-range": ("-o pnp_attn_t 2", ["-o", "pnp_attn_t", "2"]),
    "unknown-stage": ("--stage keyframes=nosuch", ["--stage", "keyframes=nosuch"]),
    "plugin-option": ("--editor controlnet -o controlnet ''",
                      ["--editor", "controlnet", "-o", "controlnet", ""]),
    "unknown-extractor": ("--editor controlnet -o control nosuch",
                          ["--editor", "controlnet", "-o", "control", "nosuch"]),
    "steps-grid": ("--steps 50 --inversion-steps 150", ["--steps", "50", "--inversion-steps", "150"]),
    "steps-1000": ("--steps 1000 --inversion-steps 1000 --frames 2",
                   ["--steps", "1000", "--inversion-steps", "1000", "--frames", "2"]),
    "out-is-a-file": ("--out names a file", ["--out", "{tmp}/file"]),
    "empty-prompt": ("--prompt ' '", ["--prompt", " "]),
    # not an error: how long the plan of a good run takes (exit 0)
    "dry-run": ("--dry-run (a good run's plan)", ["--dry-run"]),
}


def command(python: str, case: str, tmp: Path) -> list[str]:
    args = [a.replace("{tmp}", str(tmp)) for a in CASES[case][1]]
    video = str(CLIP)
    if "--video" in args:  # the case's own VIDEO
        at = args.index("--video")
        video = args[at + 1]
        del args[at:at + 2]
    prompt = [] if "--prompt" in args else ["--prompt", "a blue ball on wood"]
    out = [] if "--out" in args else ["--out", str(tmp / "out")]
    return [python, "-m", "tokenflow.cli", "run", video, *prompt, "--cache-dir", str(tmp / "cache"),
            *out, *args]


def measure(python: str, case: str, timeout: float) -> tuple[float, int | None, str]:
    """Wall seconds, exit code (None when killed) and the error line of one run."""
    with tempfile.TemporaryDirectory(prefix="tf-fast-errors-") as name:
        tmp = Path(name)
        (tmp / "file").write_text("not a directory")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
               "HF_HUB_OFFLINE": "1", "TOKENFLOW_HASH_CACHE": str(tmp / "hash-memo")}
        for var in ("TOKENFLOW_DEBUG", "TOKENFLOW_CACHE_DIR"):
            env.pop(var, None)
        start = time.perf_counter()
        try:
            # run outside any checkout, so that `python -m` imports the interpreter's tokenflow
            done = subprocess.run(command(python, case, tmp), env=env, capture_output=True,
                                  text=True, timeout=timeout, cwd=NEUTRAL_DIR)
        except subprocess.TimeoutExpired:
            return time.perf_counter() - start, None, ""
        seconds = time.perf_counter() - start
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith(("Error:", "Traceback"))]
    if not lines:  # a dry run: its last line, the totals
        lines = (done.stdout.strip() or done.stderr.strip()).splitlines()[-1:]
    return seconds, done.returncode, (lines[0] if lines else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", default=f"this={sys.executable}",
                        help="NAME=PYTHON,...: compare checkouts in one run (interleaved)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    versions = dict(v.split("=", 1) for v in args.versions.split(","))
    versions = {name: str(Path(python).absolute()) for name, python in versions.items()}
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        sys.exit(f"unknown case(s) {', '.join(unknown)}; cases: {', '.join(CASES)}")
    head = "| case | input |" + "".join(f" {v} s | {v} exit |" for v in versions) + " error line |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for case in cases:
        seconds: dict[str, list[float]] = {v: [] for v in versions}
        result: dict[str, tuple[int | None, str]] = {}
        for _ in range(args.repeat):
            for name, python in versions.items():  # interleaved
                took, code, line = measure(python, case, args.timeout)
                seconds[name].append(took)
                result[name] = (code, line)
                if code is None:  # killed: once is enough
                    break
        cells = ""
        for name in versions:
            code, _ = result[name]
            shown = (f">{args.timeout:g}" if code is None
                     else f"{statistics.median(seconds[name]):.2f}")
            cells += f" {shown} | {'killed' if code is None else code} |"
        line = result[list(versions)[-1]][1].replace("|", "\\|")
        print(f"| {case} | `{CASES[case][0]}` |{cells} {line[:160]} |", flush=True)


if __name__ == "__main__":
    main()
