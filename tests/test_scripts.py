"""The newcomer commands, checked as a newcomer runs them: tests/run.sh and scripts/start-comfyui.sh find
the Python that runs a ComfyUI (scripts/comfyui-python.sh), stop at once with a clear message when it
cannot run ComfyUI, never install into it, and never load the pack twice. These run everywhere (CI too):
real venvs of this interpreter stand in for a user's ComfyUI environment, in folder layouts made here;
the scripts run from a copy of them, so nothing is written into this checkout. The check against the
real ComfyUI server is tests/test_host_start_script.py."""

import os
import shutil
import time

import pytest

from script_helpers import (TEST_ONLY, bare_python, comfy_like_python, comfyui_folder, copy_pack, run,
                            site_listing, tree_listing)

BASH = shutil.which("bash")
SYSTEM_PATH = "/usr/bin:/bin"
NEEDS = "torch psutil yaml aiohttp safetensors"


@pytest.fixture
def pack(tmp_path):
    return copy_pack(tmp_path / "pack")


def find(pack, comfy, **env):
    r = run([BASH, os.path.join(pack, "scripts", "comfyui-python.sh"), comfy], env)
    return r.returncode, r.stdout.strip(), r.stderr


def test_python_detection_order_and_variable(tmp_path, pack):
    comfy = comfyui_folder(tmp_path / "ComfyUI")
    places = {  # in the documented order
        "venv inside": tmp_path / "ComfyUI" / "venv",
        ".venv inside": tmp_path / "ComfyUI" / ".venv",
        "venv beside": tmp_path / "venv",
        ".venv beside": tmp_path / ".venv",
        "python_embeded": tmp_path / "python_embeded",
        "python3 on PATH": tmp_path / "activated",
    }
    pythons = {name: comfy_like_python(path) for name, path in places.items()}
    # the portable build keeps python(.exe) at the top of python_embeded/: here a launcher of that venv
    launcher = tmp_path / "python_embeded" / "python"
    launcher.write_text(f'#!/bin/sh\nexec {pythons["python_embeded"]} "$@"\n')
    launcher.chmod(0o755)
    pythons["python_embeded"] = str(launcher)
    pythons["python3 on PATH"] = str(tmp_path / "activated" / "bin" / "python3")   # found by its name on PATH
    path_env = {"PATH": f"{tmp_path / 'activated' / 'bin'}:{SYSTEM_PATH}"}

    seen = []
    for name in places:
        rc, out, err = find(pack, comfy, **path_env)
        assert rc == 0, err
        # the path exactly as found (never resolved: a venv's python is a symlink, the portable build's
        # a launcher), so that a user sees the Python they set up
        found = [n for n, p in pythons.items() if p == out]
        assert found, f"looking for {name!r}: found {out!r}, not one of {pythons}; stderr: {err}"
        seen.append(found[0])
        shutil.rmtree(places[name])
    assert seen == list(places), seen

    # none left: the message names each Python tried and what it lacks
    bare = bare_python(tmp_path / "bare")
    rc, out, err = find(pack, comfy, PATH=f"{tmp_path / 'bare' / 'bin'}:{SYSTEM_PATH}")
    assert rc == 1 and out == ""
    assert f"{bare}: missing {NEEDS}" in err and "COMFYUI_PYTHON" in err, err

    # a venv that cannot run ComfyUI is passed over for the next that can
    broken = bare_python(tmp_path / "ComfyUI" / "venv")
    good = comfy_like_python(tmp_path / "venv")
    rc, out, err = find(pack, comfy, PATH=SYSTEM_PATH)
    assert (rc, out) == (0, good), err
    assert broken != good

    # COMFYUI_PYTHON wins over every place, and is never replaced by another
    other = comfy_like_python(tmp_path / "elsewhere")
    assert find(pack, comfy, COMFYUI_PYTHON=other, PATH=SYSTEM_PATH)[:2] == (0, other)
    rc, out, err = find(pack, comfy, COMFYUI_PYTHON=broken, PATH=SYSTEM_PATH)
    assert rc == 1 and out == "" and f"COMFYUI_PYTHON={broken} cannot import what ComfyUI needs: missing {NEEDS}" in err


@pytest.mark.parametrize("variable", ["COMFYUI_PYTHON", "PERFUSION_TEST_PYTHON"])
def test_run_sh_stops_at_once_for_a_python_that_cannot_run_comfyui(tmp_path, pack, variable):
    """Before anything is installed: names what is missing and how to fix it; the Python is untouched."""
    comfy = comfyui_folder(tmp_path / "ComfyUI")
    py = bare_python(tmp_path / "users_env")
    before = site_listing(py)
    start = time.monotonic()
    r = run([BASH, os.path.join(pack, "tests", "run.sh"), "--setup-only"],
            {"COMFYUI_PATH": comfy, variable: py}, timeout=60)
    took = time.monotonic() - start
    assert site_listing(py) == before
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"missing {NEEDS} (pip: torch psutil pyyaml aiohttp safetensors)" in r.stderr, r.stderr
    assert f"{py} -m pip install -r {comfy}/requirements.txt" in r.stderr, r.stderr
    assert took < 20, took
    assert not os.path.exists(os.path.join(pack, ".venv-host"))


def test_run_sh_without_a_working_python_says_where_it_looked(tmp_path, pack):
    comfy = comfyui_folder(tmp_path / "ComfyUI")
    bare_python(tmp_path / "ComfyUI" / "venv")           # a venv is there, but lacks ComfyUI's packages
    r = run([BASH, os.path.join(pack, "tests", "run.sh"), "--setup-only"],
            {"COMFYUI_PATH": comfy, "PATH": SYSTEM_PATH}, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{comfy}/venv/bin/python: missing {NEEDS}" in r.stderr, r.stderr
    assert "Fix: set COMFYUI_PYTHON" in r.stderr
    assert not os.path.exists(os.path.join(pack, ".venv-host"))


def test_run_sh_installs_test_packages_only_into_its_own_layered_venv(tmp_path, pack):
    """A stand-in for a user's ComfyUI environment (ComfyUI's packages, no test packages) beside a ComfyUI
    folder: run.sh finds it, layers .venv-host on it, and the stand-in's pip freeze does not change."""
    comfy = comfyui_folder(tmp_path / "ComfyUI")
    users = comfy_like_python(tmp_path / "venv", without=TEST_ONLY)
    before = site_listing(users)
    assert not any(line.lower().startswith("pytest==") for line in before[0])
    r = run([BASH, os.path.join(pack, "tests", "run.sh"), "--setup-only"], {"COMFYUI_PATH": comfy}, timeout=400)
    assert site_listing(users) == before
    assert r.returncode == 0, r.stdout + r.stderr
    test_python = r.stdout.strip().splitlines()[-1]
    assert test_python == os.path.join(pack, ".venv-host", "bin", "python")
    assert f"Python {users} (venv beside the ComfyUI folder)" in r.stderr, r.stderr
    # the layered venv has the test packages and sees the user's
    check = run([test_python, "-c", "import pytest, requests, torch, safetensors, numpy, PIL, sys; print(sys.prefix)"])
    assert check.returncode == 0, check.stderr
    assert os.path.samefile(check.stdout.strip(), os.path.join(pack, ".venv-host"))
    with open(os.path.join(pack, ".venv-host", ".gitignore")) as f:
        assert f.read().strip() == "*"
    # a second run reuses it
    again = run([BASH, os.path.join(pack, "tests", "run.sh"), "--setup-only"], {"COMFYUI_PATH": comfy}, timeout=200)
    assert again.returncode == 0 and again.stdout.strip() == test_python, again.stderr
    assert site_listing(users) == before


def test_run_sh_never_fetches_pypis_cuda_torch_unasked(tmp_path, pack):
    """Without COMFYUI_PATH and with only PyPI to install from (no local CPU wheel), run.sh refuses to
    install torch and says what to do, instead of fetching the multi-GB CUDA build."""
    venv = tmp_path / "venv"
    bare_python(venv, pip=True)
    env = {"PERFUSION_TEST_VENV": str(venv), "PIP_CONFIG_FILE": os.devnull}
    r = run([BASH, os.path.join(pack, "tests", "run.sh"), "--setup-only"], env, timeout=90,
            drop=("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CONSTRAINT"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "PERFUSION_TORCH=cpu bash tests/run.sh" in r.stderr and "COMFYUI_PATH=" in r.stderr, r.stderr
    assert run([str(venv / "bin" / "python"), "-c", "import torch"]).returncode != 0


def start_check(pack, comfy=None, **env):
    script = os.path.join(pack, "scripts", "start-comfyui.sh")
    overrides = dict(env)
    if comfy:
        overrides["COMFYUI_PATH"] = comfy
    return run([BASH, script, "--check", "8199"], overrides, timeout=60)


def test_start_script_uses_the_comfyui_python_and_installs_nothing_when_it_cannot(tmp_path, pack):
    comfy = comfyui_folder(tmp_path / "ComfyUI")
    py = bare_python(tmp_path / "venv")
    before = site_listing(py)
    r = start_check(pack, comfy, PATH=SYSTEM_PATH)
    assert site_listing(py) == before
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{py}: missing {NEEDS}" in r.stderr and "COMFYUI_PYTHON" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(pack, ".comfyui"))

    r = start_check(pack, None, PATH=SYSTEM_PATH)            # no COMFYUI_PATH, pack not in a custom_nodes
    assert r.returncode == 2 and "set COMFYUI_PATH" in r.stderr, r.stderr


def test_start_script_loads_a_pack_outside_custom_nodes_through_its_own_extra_paths(tmp_path, pack):
    comfy = comfyui_folder(tmp_path / "ComfyUI")
    py = comfy_like_python(tmp_path / "ComfyUI" / "venv", without=TEST_ONLY)
    before = tree_listing(comfy)
    r = start_check(pack, comfy, PATH=SYSTEM_PATH)
    assert r.returncode == 0, r.stdout + r.stderr
    state = os.path.join(pack, ".comfyui")
    assert f"{py} main.py --listen 127.0.0.1 --port 8199 --extra-model-paths-config {state}/extra_model_paths.yaml" in r.stdout
    with open(os.path.join(state, "extra_model_paths.yaml")) as f:
        assert f"custom_nodes: custom_nodes" in f.read()
    assert os.path.realpath(os.path.join(state, "custom_nodes", "ComfyUI-Perfusion")) == os.path.realpath(pack)
    # requests (ComfyUI 0.3.64 imports it, its requirements omit it) would go in a layered venv, not into py
    assert "lacks requests" in r.stderr and f"{state}/venv" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(state, "venv"))      # --check installs nothing
    assert tree_listing(comfy) == before


@pytest.mark.parametrize("how", ["symlink", "clone"])
def test_start_script_loads_a_pack_inside_custom_nodes_once(tmp_path, how):
    comfy = comfyui_folder(tmp_path / "ComfyUI")
    py = comfy_like_python(tmp_path / "venv")
    if how == "symlink":
        pack = copy_pack(tmp_path / "pack")
        os.symlink(pack, os.path.join(comfy, "custom_nodes", "ComfyUI-Perfusion"))
        r = start_check(pack, comfy, PATH=SYSTEM_PATH)
    else:                                                   # cloned there; COMFYUI_PATH not needed
        pack = copy_pack(os.path.join(comfy, "custom_nodes", "comfyui-perfusion"))
        r = start_check(pack, None, PATH=SYSTEM_PATH)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--extra-model-paths-config" not in r.stdout, r.stdout
    assert f"{py} main.py --listen 127.0.0.1 --port 8199" in r.stdout
    assert "loaded from there, once" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(pack, ".comfyui", "extra_model_paths.yaml"))
