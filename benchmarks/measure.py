"""What the benchmarks share: run `tf run` in its own process and measure it; sizes on disk."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
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


#: Where measured processes run (see ``tf_run``).
NEUTRAL_DIR = tempfile.gettempdir()


def tf_run(args: list[str], env: dict, python: str | None = None) -> dict:
    """One `tf run` in its own process: wall time (s), the process's peak RSS (MB) and CPU time
    (s, user + system: less sensitive than wall time to other work on a shared machine).
    ``python``: the interpreter whose tokenflow runs (another checkout's venv, to compare
    commits in one benchmark run); default this one."""
    python = str(Path(python).absolute()) if python else sys.executable
    start = time.perf_counter()
    # run outside any checkout: `python -m` puts the working directory first on sys.path, and a
    # checkout's own tokenflow/ there would shadow the one ``python`` has installed
    out = subprocess.run([python, "-c", MEASURE, python, "-m", "tokenflow.cli",
                          "run", *args], env=env, capture_output=True, text=True, check=False,
                         cwd=NEUTRAL_DIR)
    seconds = time.perf_counter() - start
    info = json.loads(out.stdout.strip().splitlines()[-1])
    if info["rc"] != 0:
        sys.exit(f"tf run failed:\n{out.stderr[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": info["maxrss_kb"] / 1024,
            "cpu_seconds": info.get("cpu_s", float("nan"))}


def dir_size(path: Path) -> int:
    """Bytes of every file below ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


#: Runs `tf` in this process with a thread sampling the process's RSS every 5 ms and a plugin
#: naming the stage being run; writes {phase: peak RSS bytes} as JSON to $TF_RSS_OUT at exit.
#: Phases: "prepare" (reading the video, loading the model, planning), each stage kind, and
#: "outputs" (the output folder).
PROBE = """
import atexit, json, os, sys, threading, time
import tokenflow.manager as manager
from tokenflow import hookimpl
page = os.sysconf('SC_PAGE_SIZE'); phase = ['prepare']; peaks = {}
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * page
def sample():
    while True:
        peaks[phase[0]] = max(peaks.get(phase[0], 0), rss()); time.sleep(0.005)
class Phases:
    @hookimpl
    def before_stage(self, ctx, stage, key):
        phase[0] = 'loop' if stage.kind in ('editor', 'blender') else stage.kind
    @hookimpl
    def after_stage(self, ctx, stage, key, result):
        phase[0] = 'outputs'
make = manager.make_plugin_manager
def observed(*a, **k):
    pm = make(*a, **k); pm.register(Phases(), name='benchmark.phases'); return pm
manager.make_plugin_manager = observed
def dump():
    peaks[phase[0]] = max(peaks.get(phase[0], 0), rss())
    with open(os.environ['TF_RSS_OUT'], 'w') as f: json.dump(peaks, f)
atexit.register(dump)
threading.Thread(target=sample, daemon=True).start()
sys.argv = ['tf'] + sys.argv[1:]
from tokenflow.cli import main
main()
"""


def tf_run_phases(args: list[str], env: dict, rss_out: Path,
                  python: str | None = None) -> dict:
    """:func:`tf_run` with :data:`PROBE`: also the peak RSS (MB) of each phase of the run,
    sampled (``phases``)."""
    python = str(Path(python).absolute()) if python else sys.executable
    start = time.perf_counter()
    out = subprocess.run([python, "-c", MEASURE, python, "-c", PROBE, "run", *args],
                         env={**env, "TF_RSS_OUT": str(rss_out)}, capture_output=True,
                         text=True, check=False, cwd=NEUTRAL_DIR)
    seconds = time.perf_counter() - start
    info = json.loads(out.stdout.strip().splitlines()[-1])
    if info["rc"] != 0:
        sys.exit(f"tf run failed:\n{out.stderr[-2000:]}")
    phases = {k: v / 2**20 for k, v in json.loads(rss_out.read_text()).items()}
    return {"seconds": seconds, "peak_rss_mb": info["maxrss_kb"] / 1024, "phases": phases}
