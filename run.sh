#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash run.sh lab     set everything up, then open JupyterLab on examples/quickstart.ipynb
#   bash run.sh test    set everything up, then run lint and the whole test suite
#   bash run.sh bench   set everything up (with the peer libraries), then run the full benchmark
#   bash run.sh setup   only set up
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="${GEMSCOPE_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
mode="${1:-lab}"
shift || true

say() { printf '\n== %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

setup_system() {
  # Chromium drives the browser tests; Playwright's own browser download cannot work offline.
  if [ "$mode" = test ] && [ ! -x /usr/bin/chromium ]; then
    say "installing Chromium (Debian package)"
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q chromium
  fi
}

setup_python() {
  if [ ! -x "$PY" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
  fi
  # The pinned torch comes first: a bare "torch" requirement would pull several GB of CUDA wheels.
  say "installing torch==2.13.0, then the package with its extras"
  pipq() { "$PY" -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
  pipq torch==2.13.0
  local extras="test"
  [ "$mode" = bench ] && extras="test,bench"
  pipq -e ".[$extras]" "torch==2.13.0"
  test -f gemscope_widgets/static/heatmap.js || { echo "the front-end bundle was not built"; exit 1; }
  # The news toast covers the notebook in a fresh JupyterLab; nobody here needs it.
  "$VENV/bin/jupyter" labextension disable "@jupyterlab/apputils-extension:announcements" >/dev/null 2>&1 || true
}

setup_system
setup_python
export PATH="$VENV/bin:$PATH"

case "$mode" in
  setup) ;;
  lab)
    say "opening JupyterLab on examples/quickstart.ipynb"
    exec "$VENV/bin/jupyter" lab examples/quickstart.ipynb "$@"
    ;;
  test)
    say "ruff"
    "$VENV/bin/ruff" check gemscope_widgets tests benchmarks
    say "mypy"
    "$PY" -m mypy
    say "pytest"
    exec "$PY" -m pytest "$@"
    ;;
  bench)
    exec "$PY" -m benchmarks "$@"
    ;;
  *) echo "usage: bash run.sh [lab|test|bench|setup]"; exit 2 ;;
esac
