# Shared set-up for ./scripts/demo and ./scripts/test: a .venv with the package installed.
# SAMPLER_JAX=cuda installs the CUDA build of jax (the `cuda` extra).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
EXTRAS="test"
if [ "${SAMPLER_JAX:-cpu}" = "cuda" ]; then EXTRAS="test,cuda"; fi
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
export PATH="$ROOT/.venv/bin:$PATH"
