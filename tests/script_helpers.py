"""Real Pythons and folder layouts for the checks of tests/run.sh, scripts/start-comfyui.sh and
scripts/comfyui-python.sh: every Python here is a real venv of this interpreter, with real installed
packages; nothing stands in for ComfyUI's modules (the ComfyUI folders of the script checks hold only a
main.py that refuses to run, since the scripts only look for it)."""

import importlib.metadata
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the scripts need from the pack: they run from a copy, so their state (.venv-host, .comfyui)
# lands in a temporary folder, never in this checkout.
PACK_FILES = ["scripts/comfyui-python.sh", "scripts/start-comfyui.sh", "tests/run.sh", "tests/requirements.txt",
              "tests/requirements-scripts.txt", "tests/requirements-browser.txt", "requirements.txt",
              "pyproject.toml"]
# Test-only packages: a ComfyUI environment does not have them, and the scripts must not add them.
TEST_ONLY = ("pytest", "iniconfig", "pluggy", "pygments", "pathspec", "playwright", "pyee", "greenlet", "requests")


def site_dirs():
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]


def copy_pack(dest):
    """The scripts and the files they read, as a pack folder of their own."""
    for rel in PACK_FILES:
        src = os.path.join(ROOT, rel)
        if os.path.exists(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    return str(dest)


def comfyui_folder(dest):
    """A folder laid out like a ComfyUI checkout for the scripts' checks: main.py (which refuses to run),
    comfy/ and custom_nodes/. Host checks use a copy of the real ComfyUI instead."""
    os.makedirs(os.path.join(dest, "comfy"), exist_ok=True)
    os.makedirs(os.path.join(dest, "custom_nodes"), exist_ok=True)
    with open(os.path.join(dest, "main.py"), "w") as f:
        f.write('raise SystemExit("a folder layout for script checks, not a ComfyUI")\n')
    return str(dest)


def _purelib(venv):
    py = os.path.join(venv, "bin", "python")
    return subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   text=True).strip()


def bare_python(venv, pip=False):
    """A venv of this interpreter that sees none of the test environment's packages (no torch, ...)."""
    subprocess.run([sys.executable, "-m", "venv", *(() if pip else ("--without-pip",)), str(venv)], check=True)
    return os.path.join(venv, "bin", "python")


def comfy_like_python(venv, without=()):
    """A venv that sees every package this test run sees (torch, safetensors, psutil, yaml, aiohttp, ...),
    through a .pth file, except the top-level entries of the distributions in ``without``, which are then
    linked one by one instead of the whole folder."""
    py = bare_python(venv)
    lib = _purelib(venv)
    if not without:
        with open(os.path.join(lib, "_test_env.pth"), "w") as f:
            f.writelines(f"import site; site.addsitedir({d!r})\n" for d in site_dirs())
        return py
    skip = set()
    for dist in importlib.metadata.distributions():
        if (dist.metadata["Name"] or "").lower() in without:
            skip.update(str(f).split("/")[0] for f in dist.files or ())
    for d in site_dirs():
        for name in os.listdir(d):
            target = os.path.join(lib, name)
            if name in skip or name == "__pycache__" or name.endswith(".pth") or os.path.lexists(target):
                continue
            os.symlink(os.path.join(d, name), target)
    return py


def site_listing(python):
    """What a Python's own environment holds: `pip freeze --all` and the names in its site-packages."""
    freeze = subprocess.run([python, "-m", "pip", "freeze", "--all"], capture_output=True, text=True).stdout
    lib = subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  text=True).strip()
    return sorted(freeze.splitlines()), sorted(os.listdir(lib))


def tree_listing(folder, skip=("__pycache__",)):
    """Every path under ``folder`` with its size and modification time (``skip``: folder names left out)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, folder)] = (st.st_size if not os.path.isdir(path) else 0, st.st_mtime_ns)
    return out


def run(cmd, env_overrides=None, drop=(), timeout=120, cwd=None):
    """Runs a script with this environment less the variables that steer it, plus ``env_overrides``."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"COMFYUI_PATH", "COMFYUI_PYTHON", "PERFUSION_TEST_PYTHON", "PERFUSION_PYTHON",
                        "PERFUSION_HOST_VENV", "PERFUSION_TEST_VENV", "PERFUSION_TORCH", "VIRTUAL_ENV", *drop}}
    env.update(env_overrides or {})
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
