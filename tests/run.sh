#!/usr/bin/env bash
# Sets up a test environment and runs the whole suite: `bash tests/run.sh [pytest args]`
# (`bash tests/run.sh --setup-only` sets up, prints the test Python and stops). docs/testing.md has it all.
#
# Core tests run everywhere. Host tests need a real ComfyUI: set COMFYUI_PATH to its folder. They run
# with the Python that runs that ComfyUI: $COMFYUI_PYTHON (older name: PERFUSION_TEST_PYTHON), else
# the first of venv/ or .venv/ inside or beside the ComfyUI folder, ../python_embeded/, python3 on PATH
# that can import ComfyUI's requirements (scripts/comfyui-python.sh). Test-only packages go into
# .venv-host/, a venv layered on that Python, never into the Python itself. Browser test: playwright
# drives Debian's chromium; PERFUSION_INSTALL_CHROMIUM=1 lets this script apt-get it (as root).
#
# Without COMFYUI_PATH host tests are skipped with the reason and the core tests run in .venv/ with a
# CPU torch: the torch==2.13.0 CPU wheel where pip finds one locally; else PERFUSION_TORCH=cpu (PyTorch's
# CPU index, about 200 MB) or PERFUSION_TORCH=pypi (PyPI's build: CUDA on Linux, several GB); else it
# stops and says so.
set -euo pipefail
tests=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$tests")
# shellcheck source=../scripts/comfyui-python.sh
source "$root/scripts/comfyui-python.sh"
pip_quiet=(-q --disable-pip-version-check)
say() { echo "run.sh: $*" >&2; }
setup_only=0
if [[ ${1:-} == --setup-only ]]; then setup_only=1; shift; fi
: "${COMFYUI_PYTHON:=${PERFUSION_TEST_PYTHON:-}}"
reqs=(-r "$root/requirements.txt" -r "$tests/requirements.txt" -r "$tests/requirements-scripts.txt")

if [[ -n ${COMFYUI_PATH:-} ]]; then
  if ! comfyui_is_checkout "$COMFYUI_PATH"; then
    say "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI folder (it needs main.py and comfy/); see docs/testing.md"
    exit 2
  fi
  COMFYUI_PATH=$(cd "$COMFYUI_PATH" && pwd)
  export COMFYUI_PATH
fi

if [[ -n ${COMFYUI_PATH:-} || -n $COMFYUI_PYTHON ]]; then
  # Checked before anything is installed anywhere.
  comfyui_find_python "${COMFYUI_PATH:-}" || exit 2
  base=$COMFYUI_PYTHON_FOUND
  venv=${PERFUSION_HOST_VENV:-$root/.venv-host}
  say "ComfyUI ${COMFYUI_PATH:-(not set: host tests skip)}, Python $base ($COMFYUI_PYTHON_HOW); test packages in $venv"
  py=$(perfusion_layered_venv "$base" "$venv") || exit 2
  # requests: ComfyUI 0.3.64's server imports it but its requirements.txt does not list it.
  "$py" -m pip install "${pip_quiet[@]}" "${reqs[@]}" requests
  export COMFYUI_PYTHON=$base
  if [[ -n ${COMFYUI_PATH:-} ]]; then
    # The browser test drives Debian's chromium with playwright (which downloads no browser).
    have_chromium() { command -v chromium >/dev/null || [[ -x /usr/bin/chromium ]]; }
    if ! have_chromium; then
      if [[ ${PERFUSION_INSTALL_CHROMIUM:-} == 1 && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "PERFUSION_INSTALL_CHROMIUM=1: installing Debian's chromium (apt-get)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null ||
          say "could not install chromium; the browser test will be skipped"
      else
        say "no chromium: the browser test will be skipped (PERFUSION_INSTALL_CHROMIUM=1 bash tests/run.sh, as root, apt-gets Debian's)"
      fi
    fi
    if have_chromium && [[ ${PERFUSION_BROWSER_TEST:-1} != 0 ]]; then
      "$py" -m pip install "${pip_quiet[@]}" -r "$tests/requirements-browser.txt" ||
        say "could not install playwright; the browser test will be skipped"
    fi
  fi
else
  venv=${PERFUSION_TEST_VENV:-$root/.venv}
  [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
  py=$venv/bin/python
  if ! "$py" -c "import torch" 2>/dev/null; then
    torch_spec=torch==2.13.0
    case ${PERFUSION_TORCH:-} in
      cpu)
        say "PERFUSION_TORCH=cpu: installing torch from PyTorch's CPU index (about 200 MB)"
        "$py" -m pip install "${pip_quiet[@]}" torch --index-url https://download.pytorch.org/whl/cpu ;;
      pypi)
        say "PERFUSION_TORCH=pypi: installing PyPI's torch (on Linux the CUDA build: several GB)"
        "$py" -m pip install "${pip_quiet[@]}" torch ;;
      "")
        # Install only a CPU build that pip finds without fetching PyPI's multi-GB CUDA one.
        report=$(mktemp)
        if "$py" -m pip install "${pip_quiet[@]}" --dry-run --no-deps --only-binary :all: --ignore-installed \
             --report "$report" "$torch_spec" >/dev/null 2>&1 &&
           "$py" - "$report" <<'PY'
import json, sys
item = json.load(open(sys.argv[1]))["install"][0]
url, version = item["download_info"]["url"], item["metadata"]["version"]
sys.exit(0 if url.startswith("file:") or "+cpu" in version or sys.platform != "linux" else 1)
PY
        then
          rm -f "$report"
          say "installing $torch_spec (a CPU build) into $venv"
          "$py" -m pip install "${pip_quiet[@]}" "$torch_spec"
        else
          rm -f "$report"
          say "the core tests need torch, and here pip finds no CPU build of $torch_spec: it would fetch PyPI's,"
          say "which on Linux is the CUDA build (several GB with its nvidia packages). Choose one:"
          say "  COMFYUI_PATH=/path/to/ComfyUI bash tests/run.sh   # use your ComfyUI's torch (also runs the host tests)"
          say "  PERFUSION_TORCH=cpu bash tests/run.sh             # PyTorch's CPU build into .venv/, about 200 MB"
          say "  PERFUSION_TORCH=pypi bash tests/run.sh            # PyPI's build (CUDA on Linux, several GB)"
          exit 2
        fi ;;
      *) say "PERFUSION_TORCH=$PERFUSION_TORCH: use cpu or pypi"; exit 2 ;;
    esac
  fi
  "$py" -m pip install "${pip_quiet[@]}" "${reqs[@]}"
fi

if [[ $setup_only == 1 ]]; then
  echo "$py"
  exit 0
fi
cd "$tests"
exec "$py" -m pytest "$@"
