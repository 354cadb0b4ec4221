#!/usr/bin/env bash
# The no-download demo: a real ComfyUI server with this pack on the toy world's model (committed in
# bench/toyworld/model/, 64x64 images), trains a concept, writes Gate Sweep grids and a fidelity /
# editability plot into ./toyworld-demo (1.5 min on an idle 2-core CPU, up to 10 on a busy one).
#
#   COMFYUI_PATH=/path/to/ComfyUI bash scripts/try-toyworld.sh [--out DIR] [--steps 200] [--samples 16]
#
# The Python that runs that ComfyUI is found as scripts/start-comfyui.sh finds it (COMFYUI_PYTHON, or
# a venv inside or beside it, ...); nothing is installed into it (requests, which ComfyUI 0.3.64 needs
# but does not list, goes into .comfyui/venv, a venv layered on it). Nothing is written into ComfyUI.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
# shellcheck source=comfyui-python.sh
source "$root/scripts/comfyui-python.sh"
say() { echo "try-toyworld.sh: $*" >&2; }
: "${COMFYUI_PYTHON:=${PERFUSION_PYTHON:-}}"
comfy=${COMFYUI_PATH:-}
if [[ -z $comfy ]] && [[ $(basename "$(dirname "$root")") == custom_nodes ]]; then comfy=$(dirname "$(dirname "$root")"); fi
if [[ -z $comfy ]] || ! comfyui_is_checkout "$comfy"; then
  say "set COMFYUI_PATH to your ComfyUI folder, e.g.  COMFYUI_PATH=~/ComfyUI bash scripts/try-toyworld.sh"
  exit 2
fi
comfy=$(cd "$comfy" && pwd)
comfyui_find_python "$comfy" || exit 2
py=$COMFYUI_PYTHON_FOUND
if ! comfyui_missing "$py" requests >/dev/null; then
  say "$py lacks requests, which ComfyUI imports; adding it to $root/.comfyui/venv (layered on that Python)"
  py=$(perfusion_layered_venv "$py" "$root/.comfyui/venv") || exit 2
  "$py" -m pip install -q --disable-pip-version-check requests
fi
say "ComfyUI $comfy, Python $py ($COMFYUI_PYTHON_HOW)"
COMFYUI_PATH=$comfy exec "$py" "$root/bench/toyworld/demo.py" "$@"
