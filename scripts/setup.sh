#!/usr/bin/env bash
# Creates ./.venv (if needed) with a CPU build of torch and tokenflow installed in editable mode.
# Idempotent: a second call only checks. Override the torch requirement with TORCH_SPEC, e.g.
# TORCH_SPEC="torch" for your own CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
stamp=.venv/.tokenflow-setup
want="$(sha256sum pyproject.toml | cut -c1-16) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c "import tokenflow, torch" 2>/dev/null; then
  exit 0
fi
echo "setup: installing $TORCH_SPEC and tokenflow (editable) into .venv" >&2
"$PY" -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,eval]"
"$PY" -c "import tokenflow, torch; print('setup: tokenflow', tokenflow.__version__, 'torch', torch.__version__)" >&2
echo "$want" > "$stamp"
