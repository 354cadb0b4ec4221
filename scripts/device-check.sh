#!/usr/bin/env bash
# The device check (issue 13): on a CUDA machine the host suite, the real-checkpoint tier and the
# benches on the GPU, one line of figures per step, stopping at the first failure; without CUDA the
# CPU subset, naming the steps it skipped. ≤ 8 minutes on one GPU (--budget). docs/testing.md.
#
#   COMFYUI_PATH=/path/to/ComfyUI bash scripts/device-check.sh [--cpu] [--plan] [--only safety,real] [--budget 470]
#
# Python: $PERFUSION_DEVICE_CHECK_PYTHON if set, else the test Python that tests/run.sh sets up
# (your ComfyUI's, with pytest in .venv-host/; docs/testing.md "Which Python runs your ComfyUI").
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PERFUSION_DEVICE_CHECK_PYTHON:-}
if [[ -z $py ]]; then
  py=$(bash "$root/tests/run.sh" --setup-only | tail -n 1)
fi
exec "$py" "$root/scripts/device_check.py" "$@"
