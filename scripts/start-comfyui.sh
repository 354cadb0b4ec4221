#!/usr/bin/env bash
# Starts ComfyUI on 127.0.0.1 with this pack loaded and its example workflows as templates.
#
#   COMFYUI_PATH=/path/to/ComfyUI bash scripts/start-comfyui.sh [port] [extra ComfyUI flags]
#
# Without COMFYUI_PATH it clones ComfyUI into .comfyui/ (where the internet allows) and makes a venv.
# The pack is loaded through an extra_model_paths file in .comfyui/, so nothing is written into the
# ComfyUI folder; concept files go to ComfyUI/models/perfusion as usual.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
port=${1:-8188}
shift || true
state=$root/.comfyui
mkdir -p "$state/custom_nodes"

comfy=${COMFYUI_PATH:-}
if [[ -z $comfy ]]; then
  comfy=$state/ComfyUI
  if [[ ! -f $comfy/main.py ]]; then
    echo "COMFYUI_PATH is not set: installing ComfyUI into $comfy"
    git clone --depth 1 https://github.com/comfyanonymous/ComfyUI "$comfy" || {
      echo "Could not download ComfyUI here. Set COMFYUI_PATH to a ComfyUI checkout (see ../shared/docs/HOST.md)." >&2
      exit 1; }
  fi
fi
[[ -f $comfy/main.py ]] || { echo "COMFYUI_PATH=$comfy has no main.py" >&2; exit 1; }

py=${PERFUSION_PYTHON:-}
if [[ -z $py ]]; then
  for candidate in "$(dirname "$comfy")/venv/bin/python" "$comfy/venv/bin/python" "$comfy/.venv/bin/python"; do
    [[ -x $candidate ]] && { py=$candidate; break; }
  done
fi
if [[ -z $py ]]; then
  py=$state/venv/bin/python
  if [[ ! -x $py ]]; then
    python3 -m venv "$state/venv"
    "$py" -m pip install -q -r "$comfy/requirements.txt"
  fi
fi
"$py" -m pip install -q --disable-pip-version-check -r "$root/requirements.txt"

ln -sfn "$root" "$state/custom_nodes/ComfyUI-Perfusion"
cat > "$state/extra_model_paths.yaml" <<YAML
comfyui_perfusion:
    base_path: $state
    custom_nodes: custom_nodes
YAML

flags=(--listen 127.0.0.1 --port "$port" --extra-model-paths-config "$state/extra_model_paths.yaml")
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() or torch.backends.mps.is_available() else 1)" 2>/dev/null; then
  flags+=(--cpu)
fi
echo "ComfyUI with Perfusion: http://127.0.0.1:$port  (templates: Workflow > Browse Templates > ComfyUI-Perfusion)"
cd "$comfy"
exec "$py" main.py "${flags[@]}" "$@"
