#!/usr/bin/env bash
# Creates bench/.peers-venv with TF Model Garden (tf-models-official) and
# TensorFlow 2.20 CPU, pinned by bench/peers/requirements.txt.
#
#   bash bench/peers/setup.sh            # from the repository root
#
# Idempotent: a stamp file holds the sha256 of requirements.txt; when it
# matches, nothing is done. A changed requirements.txt rebuilds the venv.
# PYTHON selects the interpreter (default python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$(dirname "${here}")/.peers-venv"
requirements="${here}/requirements.txt"
stamp="${venv}/.requirements-sha256"
python="${PYTHON:-python3}"

want="$(sha256sum "${requirements}" | cut -d' ' -f1)"
if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]]; then
  echo "peers venv up to date: ${venv}"
  exit 0
fi

rm -rf "${venv}"
"${python}" -m venv "${venv}"
"${venv}/bin/python" -m pip install --quiet --upgrade pip
"${venv}/bin/python" -m pip install --quiet -r "${requirements}"

# A CUDA build or torch would mean a dependency changed under the pins.
unwanted="$("${venv}/bin/python" -m pip list --format=freeze \
  | grep -iE '^(nvidia-|torch)' || true)"
if [[ -n "${unwanted}" ]]; then
  echo "error: ${requirements} pulled GPU/torch packages:" >&2
  echo "${unwanted}" >&2
  exit 1
fi

"${venv}/bin/python" -c "import tensorflow, official; print('TensorFlow', tensorflow.__version__)"
echo "${want}" > "${stamp}"
echo "peers venv ready: ${venv}"
