#!/usr/bin/env bash
# Finds the Python that runs a ComfyUI, for tests/run.sh and scripts/start-comfyui.sh (which source this
# file). Run on its own, it says which Python those scripts would use and exits 1 if there is none:
#
#   bash scripts/comfyui-python.sh /path/to/ComfyUI
#
# Order: $COMFYUI_PYTHON (a path or a command name; used as given, never replaced by another), then
# a venv inside the ComfyUI folder (venv/, .venv/), a venv beside it (../venv/, ../.venv/), the
# portable build's ../python_embeded/, and last python3 (or python) on PATH. The first that can import
# ComfyUI's main requirements (COMFYUI_MODULES below) is used. Nothing is installed into it.

# What a Python needs to start ComfyUI, as import names (their pip names are in comfyui_pip_names).
COMFYUI_MODULES=(torch psutil yaml aiohttp safetensors)

comfyui_pip_names() {  # import names -> pip names, for messages
  local m out=()
  for m in "$@"; do
    case $m in yaml) out+=(pyyaml) ;; PIL) out+=(Pillow) ;; *) out+=("$m") ;; esac
  done
  echo "${out[*]}"
}

# comfyui_missing PYTHON MODULE...: prints the modules PYTHON cannot find; status 0 when none is
# missing, 1 when some are, 2 when PYTHON does not run.
comfyui_missing() {
  local py=$1; shift
  local out
  out=$("$py" - "$@" 2>/dev/null <<'PY'
import importlib.util, sys
missing = []
for name in sys.argv[1:]:
    try:
        found = importlib.util.find_spec(name) is not None
    except Exception:
        found = False
    if not found:
        missing.append(name)
print(" ".join(missing))
PY
) || return 2
  [[ -z $out ]] && return 0
  echo "$out"
  return 1
}

# comfyui_candidates COMFY: the places where a ComfyUI's Python usually is, in order (existing files only).
comfyui_candidates() {
  local comfy=$1 parent dir exe
  [[ -n $comfy ]] || return 0
  parent=$(dirname "$comfy")
  for dir in "$comfy/venv" "$comfy/.venv" "$parent/venv" "$parent/.venv"; do
    for exe in "$dir/bin/python" "$dir/Scripts/python.exe"; do
      [[ -x $exe ]] && echo "$exe"
    done
  done
  for exe in "$parent/python_embeded/python.exe" "$parent/python_embeded/python"; do
    [[ -x $exe ]] && echo "$exe"
  done
  return 0
}

# comfyui_find_python COMFY: sets COMFYUI_PYTHON_FOUND (the Python) and COMFYUI_PYTHON_HOW (why that
# one), or prints what is wrong and how to fix it on stderr and returns 1. COMFY may be empty when only
# $COMFYUI_PYTHON is to be checked.
comfyui_find_python() {
  local comfy=$1 py missing status tried=()
  COMFYUI_PYTHON_FOUND= COMFYUI_PYTHON_HOW=
  local reqs=${comfy:-/path/to/ComfyUI}/requirements.txt
  if [[ -n ${COMFYUI_PYTHON:-} ]]; then
    py=$COMFYUI_PYTHON
    if [[ $py != */* ]]; then py=$(command -v "$py" || true); fi
    if [[ -z $py || ! -x $py ]]; then
      echo "COMFYUI_PYTHON=$COMFYUI_PYTHON is not a Python that can be run here." >&2
      echo "Set it to the python that runs your ComfyUI (e.g. /path/to/ComfyUI/venv/bin/python), or unset it to search the usual places." >&2
      return 1
    fi
    status=0; missing=$(comfyui_missing "$py" "${COMFYUI_MODULES[@]}") || status=$?
    if [[ $status == 2 ]]; then
      echo "COMFYUI_PYTHON=$py does not run (try: $py --version)." >&2
      return 1
    elif [[ $status == 1 ]]; then
      echo "COMFYUI_PYTHON=$py cannot import what ComfyUI needs: missing $missing (pip: $(comfyui_pip_names $missing))." >&2
      echo "Fix: point COMFYUI_PYTHON at the python that runs your ComfyUI, or install ComfyUI's requirements" >&2
      echo "     into this one: $py -m pip install -r $reqs" >&2
      return 1
    fi
    COMFYUI_PYTHON_FOUND=$py COMFYUI_PYTHON_HOW="COMFYUI_PYTHON"
    return 0
  fi
  local candidates=() c
  while IFS= read -r c; do candidates+=("$c"); done < <(comfyui_candidates "$comfy")
  for c in python3 python; do
    c=$(command -v "$c" 2>/dev/null) || continue
    [[ " ${candidates[*]} " == *" $c "* ]] || candidates+=("$c")
  done
  for py in "${candidates[@]}"; do
    status=0; missing=$(comfyui_missing "$py" "${COMFYUI_MODULES[@]}") || status=$?
    if [[ $status == 0 ]]; then
      COMFYUI_PYTHON_FOUND=$py
      case $py in
        "$comfy"/*) COMFYUI_PYTHON_HOW="venv inside the ComfyUI folder" ;;
        "$(dirname "$comfy")"/python_embeded/*) COMFYUI_PYTHON_HOW="the portable build's python_embeded" ;;
        "$(dirname "$comfy")"/*) COMFYUI_PYTHON_HOW="venv beside the ComfyUI folder" ;;
        *) COMFYUI_PYTHON_HOW="python on PATH" ;;
      esac
      return 0
    elif [[ $status == 2 ]]; then
      tried+=("  $py: does not run")
    else
      tried+=("  $py: missing $missing (pip: $(comfyui_pip_names $missing))")
    fi
  done
  echo "Found no Python that can run ComfyUI${comfy:+ at $comfy} (it needs: ${COMFYUI_MODULES[*]})." >&2
  if [[ ${#tried[@]} -gt 0 ]]; then
    echo "Tried, in order:" >&2
    printf '%s\n' "${tried[@]}" >&2
  fi
  echo "Looked for venv/ or .venv/ inside and beside the ComfyUI folder, ../python_embeded/, then python3 on PATH." >&2
  echo "Fix: set COMFYUI_PYTHON to the python that runs your ComfyUI (e.g. COMFYUI_PYTHON=/path/to/venv/bin/python)," >&2
  echo "     or activate that environment first, or make one: python3 -m venv venv && venv/bin/pip install -r $reqs" >&2
  echo "     (docs/testing.md: making a ComfyUI checkout and its venv)" >&2
  return 1
}

# comfyui_is_checkout DIR: DIR looks like a ComfyUI folder (main.py and the comfy/ package).
comfyui_is_checkout() {
  [[ -f $1/main.py && -d $1/comfy ]]
}

# perfusion_layered_venv BASE DIR: makes (or reuses) the venv DIR on top of the Python BASE: DIR sees
# every package BASE sees (through a .pth file that adds BASE's site-packages after DIR's own), and
# whatever is pip-installed into DIR stays in DIR; BASE's environment is never written to. DIR records
# its base and is made again when the base changes. Prints DIR's python on stdout.
perfusion_layered_venv() {
  local base=$1 dir=$2 want marker py purelib
  want=$("$base" -c 'import sys; print(sys.executable)') || return 1
  marker=$dir/perfusion-base.txt
  py=$dir/bin/python
  [[ -x $dir/Scripts/python.exe ]] && py=$dir/Scripts/python.exe
  if [[ -f $marker && $(cat "$marker") == "$want" ]] && "$py" -c "import pip" 2>/dev/null; then
    echo "$py"
    return 0
  fi
  if [[ -e $dir && ! -f $marker ]] && [[ -n $(ls -A "$dir" 2>/dev/null) ]]; then
    echo "$dir exists and is not a venv made by this pack; move it away or point the variable elsewhere." >&2
    return 1
  fi
  rm -rf "$dir"
  if ! "$base" -m venv --without-pip "$dir" >&2; then
    echo "Could not make a venv with $base (the portable python_embeded has no venv module; Debian needs python3-venv)." >&2
    echo "Set COMFYUI_PYTHON to a full Python that has ComfyUI's requirements." >&2
    rm -rf "$dir"
    return 1
  fi
  py=$dir/bin/python
  [[ -x $dir/Scripts/python.exe ]] && py=$dir/Scripts/python.exe
  purelib=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
  "$base" - >"$purelib/_perfusion_base.pth" <<'PY' || return 1
import os, site, sys
dirs = list(site.getsitepackages())
if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
    dirs.append(site.getusersitepackages())
dirs += [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and p not in dirs]
for d in dirs:
    if os.path.isdir(d):
        print(f"import site; site.addsitedir({d!r})")
PY
  # pip: the base's, which installs into DIR when DIR's python runs it; else DIR's own
  if ! "$py" -c "import pip" 2>/dev/null && ! "$py" -m ensurepip -q >&2; then
    echo "Could not give $dir a pip (Debian needs python3-venv)." >&2
    return 1
  fi
  echo '*' >"$dir/.gitignore"     # the venv ignores itself: nothing in it is ever committed
  echo "$want" >"$marker"
  echo "$py"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -uo pipefail
  comfy=${1:-${COMFYUI_PATH:-}}
  if [[ -z $comfy && -z ${COMFYUI_PYTHON:-} ]]; then
    echo "usage: bash scripts/comfyui-python.sh /path/to/ComfyUI   (or set COMFYUI_PATH / COMFYUI_PYTHON)" >&2
    exit 2
  fi
  comfyui_find_python "$comfy" || exit 1
  echo "$COMFYUI_PYTHON_FOUND"
  echo "(${COMFYUI_PYTHON_HOW})" >&2
fi
