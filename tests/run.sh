#!/usr/bin/env bash
# Sets up a test environment and runs the whole suite: `bash tests/run.sh [pytest args]`.
#
# Core tests run everywhere. Host tests need a real ComfyUI: set COMFYUI_PATH to its checkout
# (../shared/docs/HOST.md); they then use the venv next to it (DEST/venv) unless
# PERFUSION_TEST_PYTHON names another Python. Without COMFYUI_PATH they are skipped with the reason.
set -euo pipefail
tests=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$tests")
pip_quiet=(-q --disable-pip-version-check)

if [[ -n ${PERFUSION_TEST_PYTHON:-} ]]; then
  py=$PERFUSION_TEST_PYTHON
elif [[ -n ${COMFYUI_PATH:-} && -x $(dirname "$COMFYUI_PATH")/venv/bin/python ]]; then
  py=$(dirname "$COMFYUI_PATH")/venv/bin/python
else
  venv=${PERFUSION_TEST_VENV:-$root/.venv}
  [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
  py=$venv/bin/python
fi
# A CPU torch for the core tests; ComfyUI's venv already has its own.
"$py" -c "import torch" 2>/dev/null || "$py" -m pip install "${pip_quiet[@]}" torch==2.13.0
"$py" -m pip install "${pip_quiet[@]}" -r "$root/requirements.txt" -r "$tests/requirements.txt"
if [[ -n ${COMFYUI_PATH:-} ]]; then
  # The browser test drives Debian's chromium with playwright (which downloads no browser).
  if ! command -v chromium >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null ||
      echo "run.sh: could not install chromium; the browser test will be skipped" >&2
  fi
  "$py" -m pip install "${pip_quiet[@]}" -r "$tests/requirements-browser.txt" ||
    echo "run.sh: could not install playwright; the browser test will be skipped" >&2
fi
cd "$tests"
exec "$py" -m pytest "$@"
