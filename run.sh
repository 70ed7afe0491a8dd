#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash run.sh lab     set everything up, then open JupyterLab on a copy of examples/ ($GEMSCOPE_NOTEBOOKS,
#                       default ~/gemscope-notebooks; copied once, never overwritten) at quickstart.ipynb
#   bash run.sh test    set everything up, then run lint and the whole test suite, then the backend tests again
#                       against the lowest transformers pyproject.toml declares (a second venv, set up once)
#   bash run.sh bench   set everything up (with the peer libraries), then run the full benchmark
#   bash run.sh setup   only set up
# Set-up is skipped when nothing it depends on changed since it last succeeded (a stamp in the venv);
# GEMSCOPE_SETUP=force redoes it, GEMSCOPE_SETUP=skip never runs it (a venv you manage yourself),
# GEMSCOPE_SETUP=check only says whether it is current (exit status 0) or would run (exit status 3).
# GEMSCOPE_LOWEST=0 skips the lowest-versions run of `test`; it is also skipped when `test` is given pytest
# arguments (a selection of your own), unless GEMSCOPE_LOWEST=1. In the same way, `test` first sets up
# circuit-tracer 0.5.0 in .cache/venv-ct (once) so that the peer check of attribution graphs runs;
# GEMSCOPE_PEERS=0 skips that (the peer test then skips).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="${GEMSCOPE_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
mode="${1:-lab}"
shift || true

say() { printf '\n== %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

extras="test"
[ "$mode" = bench ] && extras="test,bench"

# Everything the set-up depends on, hashed: this script, the Python and npm manifests, the front-end
# sources, the interpreter and the checkout's path (an editable install points there).
setup_inputs_hash() {
  {
    echo "root=$ROOT extras=$extras"
    "$PY" -VV 2>&1 || true
    readlink -f "$PY" || true
    cat run.sh pyproject.toml package.json package-lock.json 2>/dev/null || true
    # Sources only: tools write caches (vite, tsc) that must not make a finished set-up look stale.
    find js -name node_modules -prune -o -type f ! -name '*~' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -d' ' -f1
}

STAMP="$VENV/.gemscope-setup-$extras"
LABEXTENSION="$VENV/share/jupyter/labextensions/gemscope-widgets"

setup_is_current() {
  [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(setup_inputs_hash)" ] || return 1
  for bundle in heatmap feature_pane token_view steer; do
    [ -f "gemscope_widgets/static/$bundle.js" ] || return 1
  done
  # The JupyterLab extension: built, and the venv's copy (made by the editable install) is that build.
  cmp -s gemscope_widgets/labextension/package.json "$LABEXTENSION/package.json" || return 1
  # The venv must still import this checkout (not another one, not an uninstalled package).
  [ "$("$PY" -c 'import gemscope_widgets, os; print(os.path.dirname(os.path.dirname(gemscope_widgets.__file__)))' \
      2>/dev/null)" = "$ROOT" ]
}

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
  pipq -e ".[$extras]" "torch==2.13.0"
  test -f gemscope_widgets/static/heatmap.js || { echo "the front-end bundle was not built"; exit 1; }
  cmp -s gemscope_widgets/labextension/package.json "$LABEXTENSION/package.json" \
    || { echo "the JupyterLab extension was not built or not installed into $LABEXTENSION"; exit 1; }
  # The news toast covers the notebook in a fresh JupyterLab; nobody here needs it.
  "$VENV/bin/jupyter" labextension disable "@jupyterlab/apputils-extension:announcements" >/dev/null 2>&1 || true
}

# The backend tests also run against the lowest transformers that pyproject.toml declares, in their own venv
# (torch stays at the pinned release): the declared minimum is the version tested.
LOWEST_VENV="${GEMSCOPE_LOWEST_VENV:-$VENV-lowest}"
LOWEST_PY="$LOWEST_VENV/bin/python"
LOWEST_STAMP="$LOWEST_VENV/.gemscope-setup-lowest"
LOWEST_TESTS=(tests/backend tests/test_scope.py tests/test_cache.py -m "not browser and not slow")

lowest_transformers() {
  sed -n 's/^ *"transformers>=\([0-9][0-9.]*\)".*/\1/p' pyproject.toml
}

lowest_inputs_hash() {
  {
    echo "root=$ROOT transformers=$(lowest_transformers)"
    "$LOWEST_PY" -VV 2>&1 || true
    cat run.sh pyproject.toml 2>/dev/null || true
  } | sha256sum | cut -d' ' -f1
}

setup_lowest() {
  local version
  version=$(lowest_transformers)
  [ -n "$version" ] || { echo "pyproject.toml declares no transformers>=X minimum"; exit 1; }
  case "${GEMSCOPE_SETUP:-auto}" in
    skip) [ -x "$LOWEST_PY" ] || { echo "GEMSCOPE_SETUP=skip and no $LOWEST_VENV: set it up once without skip"; exit 1; }
          return ;;
    force) rm -f "$LOWEST_STAMP" ;;
  esac
  if [ ! -f "$LOWEST_STAMP" ] || [ "$(cat "$LOWEST_STAMP")" != "$(lowest_inputs_hash)" ]; then
    say "setting up $LOWEST_VENV with transformers==$version (once)"
    [ -x "$LOWEST_PY" ] || python3 -m venv "$LOWEST_VENV"
    pipl() { "$LOWEST_PY" -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
    pipl --upgrade pip
    pipl torch==2.13.0
    pipl -e ".[gguf]" "torch==2.13.0" "transformers==$version" "pytest>=8" "pytest-timeout>=2" "nbformat>=5.9"
    lowest_inputs_hash > "$LOWEST_STAMP"
  fi
}

[ "${GEMSCOPE_SETUP:-auto}" = check ] && { setup_is_current && exit 0; exit 3; }
setup_system
case "${GEMSCOPE_SETUP:-auto}" in
  skip) ;;
  force) setup_python; setup_inputs_hash > "$STAMP" ;;
  auto)
    if setup_is_current; then
      say "set-up is current (GEMSCOPE_SETUP=force redoes it)"
    else
      setup_python
      setup_inputs_hash > "$STAMP"
    fi
    ;;
  *) echo "GEMSCOPE_SETUP must be auto, force, skip or check"; exit 2 ;;
esac
export PATH="$VENV/bin:$PATH"

case "$mode" in
  setup) ;;
  lab)
    # JupyterLab works on a copy of examples/ outside the checkout, so that autosave and File > New never write
    # into tracked files. Each notebook is copied once, when the copy is missing; an existing copy is the
    # user's and is never overwritten (delete it to get the checkout's version again).
    notebooks="${GEMSCOPE_NOTEBOOKS:-$HOME/gemscope-notebooks}"
    mkdir -p "$notebooks"
    for example in examples/*.ipynb; do
      copy="$notebooks/$(basename "$example")"
      if [ ! -e "$copy" ]; then
        cp "$example" "$copy"
      elif ! cmp -s "$example" "$copy"; then
        echo "note: keeping your $copy (it differs from $example; delete it to get the checkout's version)"
      fi
    done
    say "opening JupyterLab on $notebooks/quickstart.ipynb"
    # JupyterLab refuses to run as root without this flag; containers and cloud notebooks often are root.
    root_flag=()
    [ "$(id -u)" = 0 ] && root_flag=(--allow-root)
    cd "$notebooks"
    exec "$VENV/bin/jupyter" lab quickstart.ipynb --ServerApp.root_dir="$notebooks" \
      ${root_flag[@]+"${root_flag[@]}"} "$@"
    ;;
  test)
    say "ruff"
    "$VENV/bin/ruff" check gemscope_widgets tests benchmarks
    say "mypy"
    "$PY" -m mypy
    say "front end: tsc --noEmit, vitest"
    [ -x node_modules/.bin/vitest ] || npm ci --no-audit --no-fund
    npm run --silent typecheck
    npm test --silent
    whole_suite() { [ "${1:-}" = 1 ] || { [ -z "${1:-}" ] && [ "$2" -eq 0 ]; }; }
    if whole_suite "${GEMSCOPE_PEERS:-}" $#; then
      say "circuit-tracer 0.5.0 in its own venv (.cache/venv-ct), for the peer check of attribution graphs"
      PKG_PYTHON="$PY" bash benchmarks/circuit_tracer_venv.sh
    fi
    say "pytest"
    status=0
    "$PY" -m pytest "$@" || status=$?
    if whole_suite "${GEMSCOPE_LOWEST:-}" $#; then
      setup_lowest
      say "pytest, backend only, transformers==$(lowest_transformers) (${LOWEST_TESTS[*]})"
      "$LOWEST_PY" -m pytest -p no:cacheprovider "${LOWEST_TESTS[@]}" || status=$?
    fi
    exit "$status"
    ;;
  bench)
    exec "$PY" -m benchmarks "$@"
    ;;
  *) echo "usage: bash run.sh [lab|test|bench|setup]"; exit 2 ;;
esac
