#!/usr/bin/env bash
# Build the virtual environment of the circuit-tracer peer (never a runtime dependency of the package).
# circuit-tracer 0.5.0 pins transformers<=4.57.3 and huggingface-hub<1, which this package's transformers 5
# cannot share, so it gets its own environment: .cache/venv-ct (or $CT_VENV). nnsight is pinned to 0.7.0:
# circuit-tracer 0.5.0 imports nnsight.intervention.tracing, which nnsight 0.8 no longer has.
# `bash run.sh test` calls this before the test suite; a stamp in the venv skips the install when the pins and
# the package's torch are unchanged.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${CT_VENV:-$here/.cache/venv-ct}"
python="${PYTHON:-python3}"
# The same torch as the package's environment ($PKG_PYTHON, else python3), so both sides compute alike.
torch_version="$("${PKG_PYTHON:-python3}" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null \
  || echo 2.13.0)"
pins=("torch==$torch_version" "circuit-tracer==0.5.0" "transformers==4.57.3" "huggingface-hub<1" "nnsight==0.7.0"
  safetensors)
stamp="$venv/.gemscope-peer-pins"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${pins[*]}" ]; then
  echo "circuit-tracer environment is current: $venv"
  exit 0
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# The pinned torch first, alone: resolved together with circuit-tracer, pip could pick CUDA wheels.
pipq() { "$venv/bin/pip" install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
pipq "torch==$torch_version"
pipq "${pins[@]}"
"$venv/bin/python" -c "import circuit_tracer, transformers, torch; print('circuit-tracer ready:', transformers.__version__, torch.__version__)"
echo "${pins[*]}" > "$stamp"
