"""What the benchmarks share: run `tf run` in its own process and measure it; sizes on disk."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

#: Runs the command given as arguments and prints its exit code, peak RSS and CPU seconds (its
#: children's).
MEASURE = (
    "import resource, subprocess, sys, json;"
    "r = subprocess.run(sys.argv[1:]);"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN);"
    "print(json.dumps({'rc': r.returncode, 'maxrss_kb': u.ru_maxrss,"
    " 'cpu_s': u.ru_utime + u.ru_stime}))"
)


def tf_run(args: list[str], env: dict, python: str | None = None) -> dict:
    """One `tf run` in its own process: wall time (s), the process's peak RSS (MB) and CPU time
    (s, user + system: less sensitive than wall time to other work on a shared machine).
    ``python``: the interpreter whose tokenflow runs (another checkout's venv, to compare
    commits in one benchmark run); default this one."""
    python = python or sys.executable
    start = time.perf_counter()
    out = subprocess.run([python, "-c", MEASURE, python, "-m", "tokenflow.cli",
                          "run", *args], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    info = json.loads(out.stdout.strip().splitlines()[-1])
    if info["rc"] != 0:
        sys.exit(f"tf run failed:\n{out.stderr[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": info["maxrss_kb"] / 1024,
            "cpu_seconds": info.get("cpu_s", float("nan"))}


def dir_size(path: Path) -> int:
    """Bytes of every file below ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
