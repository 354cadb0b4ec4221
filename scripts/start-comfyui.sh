#!/usr/bin/env bash
# Starts your ComfyUI on 127.0.0.1 with this pack loaded and its example workflows as templates.
#
#   COMFYUI_PATH=/path/to/ComfyUI bash scripts/start-comfyui.sh [--check] [port] [extra ComfyUI flags]
#
# COMFYUI_PATH: your ComfyUI folder; when unset and the pack sits in a ComfyUI's custom_nodes/, that one.
# COMFYUI_PYTHON (older name: PERFUSION_PYTHON): the Python that runs it; when unset, the first of venv/
# or .venv/ inside or beside the ComfyUI folder, ../python_embeded/, python3 on PATH that can import
# ComfyUI's requirements (scripts/comfyui-python.sh). Nothing is installed into that Python. Only if it
# lacks `requests` (ComfyUI 0.3.64 imports it but leaves it out of its requirements.txt) is requests
# (well under 1 MB) put in .comfyui/venv, a venv layered on it.
# --check: find everything, print the command, start nothing.
#
# Nothing is written into the ComfyUI folder by this script: when the pack is not in its custom_nodes/,
# it is loaded through .comfyui/extra_model_paths.yaml (a custom_nodes entry); when it is there (cloned
# or symlinked), it is loaded from there only, once. ComfyUI itself keeps its outputs, user settings and
# database where it always does.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)   # as reached (maybe through a symlink)
root=$(cd "$here" && pwd -P)
# shellcheck source=comfyui-python.sh
source "$root/scripts/comfyui-python.sh"
say() { echo "start-comfyui.sh: $*" >&2; }
check=0
if [[ ${1:-} == --check ]]; then check=1; shift; fi
port=8188
if [[ ${1:-} =~ ^[0-9]+$ ]]; then port=$1; shift; fi
state=$root/.comfyui
: "${COMFYUI_PYTHON:=${PERFUSION_PYTHON:-}}"

comfy=${COMFYUI_PATH:-}
if [[ -z $comfy ]]; then
  if [[ $(basename "$(dirname "$here")") == custom_nodes ]] && comfyui_is_checkout "$(dirname "$(dirname "$here")")"; then
    comfy=$(dirname "$(dirname "$here")")
    say "COMFYUI_PATH is not set: using the ComfyUI this pack sits in, $comfy"
  else
    say "set COMFYUI_PATH to your ComfyUI folder, e.g.  COMFYUI_PATH=~/ComfyUI bash scripts/start-comfyui.sh"
    say "(no ComfyUI yet? docs/testing.md shows how to clone one and make its venv)"
    exit 2
  fi
fi
if ! comfyui_is_checkout "$comfy"; then
  say "COMFYUI_PATH=$comfy is not a ComfyUI folder (it needs main.py and comfy/)"
  exit 2
fi
comfy=$(cd "$comfy" && pwd)
comfyui_find_python "$comfy" || exit 2
base=$COMFYUI_PYTHON_FOUND
say "ComfyUI $comfy, Python $base ($COMFYUI_PYTHON_HOW)"
py=$base
if missing=$(comfyui_missing "$base" requests); then :; else
  if [[ $check == 1 ]]; then
    say "$base lacks requests (ComfyUI imports it): it would go into $state/venv, layered on that Python"
  else
    say "$base lacks requests, which ComfyUI imports; adding it to $state/venv (a venv layered on that Python)"
    py=$(perfusion_layered_venv "$base" "$state/venv") || exit 2
    "$py" -m pip install -q --disable-pip-version-check requests
  fi
fi

# Is the pack already one of ComfyUI's custom nodes (cloned there, or a symlink to it)?
inside= others=()
for entry in "$comfy"/custom_nodes/*; do
  [[ -d $entry ]] || continue
  if [[ $(cd "$entry" && pwd -P) == "$root" ]]; then
    inside=$entry
  elif [[ -f $entry/pyproject.toml ]] && grep -q '^name = "comfyui-perfusion"' "$entry/pyproject.toml"; then
    others+=("$entry")
  fi
done
flags=(--listen 127.0.0.1 --port "$port")
if [[ -n $inside ]]; then
  say "the pack is in ComfyUI's custom_nodes ($inside): loaded from there, once"
else
  mkdir -p "$state/custom_nodes"
  ln -sfn "$root" "$state/custom_nodes/ComfyUI-Perfusion"
  cat > "$state/extra_model_paths.yaml" <<YAML
comfyui_perfusion:
    base_path: $state
    custom_nodes: custom_nodes
YAML
  flags+=(--extra-model-paths-config "$state/extra_model_paths.yaml")
fi
for other in ${others[@]+"${others[@]}"}; do
  say "warning: another copy of this pack is in $other; ComfyUI will load both and the last one loaded wins"
done
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() or torch.backends.mps.is_available() else 1)" 2>/dev/null; then
  flags+=(--cpu)
fi
if [[ $check == 1 ]]; then
  echo "cd $comfy && $py main.py ${flags[*]} $*"
  exit 0
fi
echo "ComfyUI with Perfusion: http://127.0.0.1:$port  (templates: Workflow > Browse Templates > $(basename "${inside:-ComfyUI-Perfusion}"))"
cd "$comfy"
exec "$py" main.py "${flags[@]}" "$@"
