"""Host tests of the two newcomer commands with the real ComfyUI from $COMFYUI_PATH and the Python that runs
it ($COMFYUI_PYTHON, which tests/run.sh sets):

* scripts/start-comfyui.sh, run as a user runs it: that ComfyUI copied to a temporary folder (never written
  to), this pack symlinked into the copy's custom_nodes/, started for real on a free 127.0.0.1 port. The
  pack must be imported once and each example workflow listed once as a template; the script must write
  nothing into the ComfyUI folder.
* tests/run.sh: it puts its test packages into a venv of its own and leaves that Python's environment as
  it was.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from script_helpers import ROOT, copy_pack, run, site_listing, tree_listing

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
if not COMFYUI_PATH or not os.path.isfile(os.path.join(COMFYUI_PATH, "comfy", "model_patcher.py")):
    pytest.skip("host test: set COMFYUI_PATH to a ComfyUI checkout (see docs/testing.md)", allow_module_level=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_comfyui(dest):
    """The checkout without its git data, bytecode, whatever earlier runs left in its data folders, and
    this pack where it is one of the checkout's custom nodes (cloned there: the test puts it back as a
    symlink)."""
    def ignore(folder, names):
        rel = os.path.relpath(folder, COMFYUI_PATH)
        if rel in ("temp", "output", "input", "user"):
            return names
        if rel == "custom_nodes":
            return [n for n in names if os.path.realpath(os.path.join(folder, n)) == os.path.realpath(ROOT)
                    or n == "__pycache__"]
        return [n for n in names if n in (".git", "__pycache__")]
    shutil.copytree(COMFYUI_PATH, dest, symlinks=True, ignore=ignore)
    return str(dest)


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_start_script_loads_a_pack_inside_custom_nodes_once(tmp_path):
    comfy = copy_comfyui(tmp_path / "ComfyUI")
    os.symlink(ROOT, os.path.join(comfy, "custom_nodes", "ComfyUI-Perfusion"))
    data = tmp_path / "data"
    for d in ("output", "temp", "input", "user"):
        (data / d).mkdir(parents=True)
    before = tree_listing(comfy)
    state = os.path.join(ROOT, ".comfyui")
    state_before = tree_listing(state) if os.path.isdir(state) else None
    port = free_port()
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    env = {"COMFYUI_PATH": comfy, "COMFYUI_PYTHON": python, "PERFUSION_PYTHON": python}     # and its older name
    cmd = [shutil.which("bash"), os.path.join(ROOT, "scripts", "start-comfyui.sh"), str(port),
           "--output-directory", str(data / "output"), "--temp-directory", str(data / "temp"),
           "--input-directory", str(data / "input"), "--user-directory", str(data / "user"),
           "--database-url", "sqlite:///:memory:", "--disable-api-nodes"]
    log_path = tmp_path / "server.log"
    full_env = dict(os.environ, **env)
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)   # bash execs python
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while True:
            assert process.poll() is None, "ComfyUI stopped:\n" + log_path.read_text()[-4000:]
            assert time.time() < deadline, "ComfyUI did not start:\n" + log_path.read_text()[-4000:]
            try:
                get(url + "/system_stats")
                break
            except OSError:
                time.sleep(0.5)
        templates = get(url + "/api/workflow_templates")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log = log_path.read_text()

    imports = [line for line in log.splitlines() if " seconds" in line and line.strip().endswith("ComfyUI-Perfusion")]
    assert len(imports) == 1, "\n".join(imports) or log[-4000:]
    workflows = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(ROOT, "workflows")) if f.endswith(".json"))
    assert sorted(templates.get("ComfyUI-Perfusion", [])) == workflows, templates
    listed = [name for names in templates.values() for name in names if name in workflows]
    assert sorted(listed) == workflows, templates
    # A running ComfyUI with the pack: only the pack's own model folders appear (empty, made on purpose
    # by nodes/model_folder.py so that a newcomer finds where concept files go)
    after = tree_listing(comfy)
    made = {k for k in after if k not in before}
    assert made <= {"models/perfusion", "models/subject_ref"}, made
    assert all(not os.listdir(os.path.join(comfy, k)) for k in made)
    assert {k: v for k, v in after.items() if k not in made and k != "models"} == \
        {k: v for k, v in before.items() if k != "models"}
    check = run([*cmd[:2], "--check", *cmd[2:]], env)
    assert check.returncode == 0 and "--extra-model-paths-config" not in check.stdout, check.stdout + check.stderr
    assert tree_listing(comfy) == after                     # the script itself writes nothing there
    if state_before is not None:
        assert tree_listing(state) == state_before
    else:
        assert not os.path.exists(state)


def test_run_sh_installs_nothing_into_the_comfyui_python(tmp_path):
    """run.sh from a copy of the pack's scripts (so its .venv-host is made anew, in tmp_path) against this
    ComfyUI: the Python that runs it has the same packages afterwards, and the test venv sees them all."""
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    before = site_listing(python)
    pack = copy_pack(tmp_path / "pack")
    r = run([shutil.which("bash"), os.path.join(pack, "tests", "run.sh"), "--setup-only"],
            {"COMFYUI_PATH": COMFYUI_PATH, "COMFYUI_PYTHON": python, "PERFUSION_BROWSER_TEST": "0"}, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    test_python = r.stdout.strip().splitlines()[-1]
    assert test_python == os.path.join(pack, ".venv-host", "bin", "python"), r.stdout
    assert site_listing(python) == before
    check = run([test_python, "-c", "import pytest, requests, torch, psutil, yaml, aiohttp, safetensors, sys; "
                                    "print(sys.prefix)"])
    assert check.returncode == 0, check.stderr
    assert os.path.samefile(check.stdout.strip(), os.path.join(pack, ".venv-host"))
