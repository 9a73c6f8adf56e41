#!/usr/bin/env bash
# Set up everything vaefail needs in ./.venv (Python 3.11+), and TeX Live from Debian's
# packages when latexmk is missing.  Safe to re-run.
#
#   TORCH_SPEC       the torch requirement (default: torch==2.13.0, the CPU build these
#                    machines hold on disk)
#   TORCH_INDEX_URL  an extra package index for a CUDA build, e.g.
#                    TORCH_SPEC=torch==2.13.0 TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
#   VAEFAIL_NO_TEX=1 skip the TeX installation (the PDF rule then fails with a clear message)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ -z "${VAEFAIL_NO_TEX:-}" ] && ! command -v latexmk >/dev/null 2>&1; then
  echo "== installing TeX Live and latexmk from Debian's packages"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    texlive-latex-base texlive-latex-recommended texlive-fonts-recommended latexmk >/dev/null
fi

echo "== creating .venv and installing Python packages"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  .venv/bin/pip install -q "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX_URL"
else
  .venv/bin/pip install -q "$TORCH_SPEC"
fi
.venv/bin/pip install -q -r envs/requirements.txt
.venv/bin/pip install -q --no-deps -e .
.venv/bin/python -c "import torch, vaefail; print('torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"
