"""Host test: the real ComfyUI server on 127.0.0.1 with this pack; the example workflows run via POST /prompt."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import host  # skips this module without COMFYUI_PATH

pack = host.load_pack()
WORKFLOWS = os.path.join(host.ROOT, "workflows")
TESTS = os.path.dirname(os.path.abspath(__file__))
from workflow_api import to_api  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base, port):
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(base / "server.log", "w")
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--extra-model-paths-config", str(base / "extra_model_paths.yaml"), "--disable-api-nodes",
               "--disable-auto-launch", "--database-url", "sqlite:///:memory:",
               "--output-directory", str(base / "output"), "--temp-directory", str(base / "temp"),
               "--input-directory", str(base / "input"), "--user-directory", str(base / "user")]
        env = dict(os.environ, PERFUSION_CAPTIONS=str(base / "captions_subset.txt"))   # a slice: seconds, not minutes
        self.process = subprocess.Popen(cmd, cwd=host.COMFYUI_PATH, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.base = base

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path, body):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_ready(self, seconds=120):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.process.poll() is not None:
                break
            try:
                return self.get("/system_stats")
            except OSError:
                time.sleep(0.5)
        raise AssertionError("ComfyUI did not start:\n" + (self.base / "server.log").read_text()[-4000:])

    def run(self, prompt, seconds=120):
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "perfusion-test"})
        assert status == 200, body
        deadline = time.time() + seconds
        while time.time() < deadline:
            history = self.get(f"/history/{body['prompt_id']}")
            if body["prompt_id"] in history and history[body["prompt_id"]]["status"].get("completed") is not None:
                return history[body["prompt_id"]]
            time.sleep(0.3)
        raise AssertionError("prompt did not finish:\n" + (self.base / "server.log").read_text()[-4000:])

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_server")
    (base / "custom_nodes").mkdir()
    os.symlink(host.ROOT, base / "custom_nodes" / "ComfyUI-Perfusion")
    os.symlink(os.path.join(TESTS, "comfy_test_pack"), base / "custom_nodes" / "perfusion_test_pack")
    concepts = base / "models" / "perfusion"
    concepts.mkdir(parents=True)
    from concept_factory import random_covariance
    C = random_covariance(host.SD15_CONTEXT, 3)
    model, clip = host.tiny_model("sd1"), host.tiny_clip("sd1")       # same shapes as the server's tiny model
    for k, trigger in enumerate(("sks", "ohwx")):
        pack.core.concept_file.write_concept(str(concepts / f"test_{trigger}.safetensors"),
                                             host.concept_for(pack, model, clip, trigger=trigger, seed=k, covariance=C))
    (base / "extra_model_paths.yaml").write_text(
        f"perfusion_test:\n    base_path: {base}\n    custom_nodes: custom_nodes\n    perfusion: models/perfusion\n")
    for d in ("output", "temp", "input", "user"):
        (base / d).mkdir()
    with open(os.path.join(host.ROOT, "data", "captions.txt")) as f:
        (base / "captions_subset.txt").write_text("".join(f.readlines()[:1500]))
    subject = base / "input" / "test_subject"
    subject.mkdir()
    from PIL import Image
    for k in range(3):
        Image.new("RGB", (64, 64), (200, 120 + 30 * k, 40)).save(subject / f"photo{k}.png")
    s = Server(base, free_port())
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def test_server_lists_the_nodes(server):
    info = server.get("/object_info")
    load, gate = info["PerfusionLoadConcept"], info["PerfusionGateStrength"]
    assert load["display_name"] == "Load Rank-1 Concept" and gate["display_name"] == "Gate Strength"
    assert load["category"] == "perfusion" and load["output"] == ["MODEL", "CLIP"]
    assert set(load["input"]["required"]["concept_name"][0]) == {"test_sks.safetensors", "test_ohwx.safetensors"}
    assert gate["input"]["required"]["beta"][1]["display"] == "slider"
    assert set(server.get("/models/perfusion")) == {"test_sks.safetensors", "test_ohwx.safetensors"}
    assert "ComfyUI-Perfusion" in server.get("/workflow_templates")


def tiny(workflow, concepts):
    """The example workflow on the tiny model: checkpoint loader swapped, concept names set, small and fast."""
    api = to_api(workflow, host_object_info[0])
    names = iter(concepts)
    for node in api.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node.update(class_type="PerfusionTest_TinyCheckpoint", inputs={"family": "sd1"})
        elif node["class_type"] == "PerfusionLoadConcept":
            node["inputs"]["concept_name"] = next(names)
        elif node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        elif node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
        elif node["class_type"] == "LoadImageSetFromFolderNode":
            node["inputs"]["folder"] = "test_subject"
        elif node["class_type"] == "PerfusionTrainConcept":
            node["inputs"].update(steps=2, batch_size=1, grad_accumulation=1, resolution=64, filename="served_concept")
    return api


host_object_info = []


@pytest.mark.parametrize("name,concepts", [("perfusion-one-concept.json", ["test_sks.safetensors"]),
                                           ("perfusion-two-concepts.json", ["test_sks.safetensors", "test_ohwx.safetensors"])])
def test_example_workflow_runs(server, name, concepts):
    if not host_object_info:
        host_object_info.append(server.get("/object_info"))
    workflow = json.load(open(os.path.join(WORKFLOWS, name)))
    result = server.run(tiny(workflow, concepts))
    assert result["status"]["status_str"] == "success", result["status"]
    images = [img for out in result["outputs"].values() for img in out.get("images", [])]
    assert len(images) == 1 and images[0]["filename"].endswith(".png")
    assert (server.base / "output" / images[0]["subfolder"] / images[0]["filename"]).is_file()


def test_training_workflow_runs_and_its_concept_loads(server):
    if not host_object_info:
        host_object_info.append(server.get("/object_info"))
    assert server.get("/object_info/PerfusionTrainConcept")["PerfusionTrainConcept"]["display_name"] == "Train Perfusion Concept"
    workflow = json.load(open(os.path.join(WORKFLOWS, "perfusion-train-concept.json")))
    result = server.run(tiny(workflow, []), seconds=300)
    assert result["status"]["status_str"] == "success", result["status"]
    assert (server.base / "models" / "perfusion" / "served_concept.safetensors").is_file()
    assert "served_concept.safetensors" in server.get("/object_info/PerfusionLoadConcept")[
        "PerfusionLoadConcept"]["input"]["required"]["concept_name"][0]                      # no restart needed
    saved = [img for out in result["outputs"].values() for img in out.get("images", [])]
    assert len(saved) == 2                                        # the loss curve preview and the sample
    before = (server.base / "models" / "perfusion" / "served_concept.safetensors").read_bytes()
    rerun = tiny(workflow, [])                                    # another seed, same filename: refused
    next(n for n in rerun.values() if n["class_type"] == "PerfusionTrainConcept")["inputs"]["seed"] = 1
    again = server.run(rerun)
    assert again["status"]["status_str"] == "error" and "already exists" in json.dumps(again["status"]["messages"])
    assert (server.base / "models" / "perfusion" / "served_concept.safetensors").read_bytes() == before


def test_out_of_range_slider_is_refused_before_running(server):
    if not host_object_info:
        host_object_info.append(server.get("/object_info"))
    api = tiny(json.load(open(os.path.join(WORKFLOWS, "perfusion-one-concept.json"))), ["test_sks.safetensors"])
    gate = next(n for n in api.values() if n["class_type"] == "PerfusionGateStrength")
    gate["inputs"]["beta"] = 5.0
    status, body = server.post("/prompt", {"prompt": api})
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"


def test_bad_concept_file_fails_with_the_message(server):
    if not host_object_info:
        host_object_info.append(server.get("/object_info"))
    (server.base / "models" / "perfusion" / "broken.safetensors").write_bytes(b"\x80\x04.")
    api = tiny(json.load(open(os.path.join(WORKFLOWS, "perfusion-one-concept.json"))), ["broken.safetensors"])
    result = server.run(api)
    assert result["status"]["status_str"] == "error"
    messages = json.dumps(result["status"]["messages"])
    assert "broken.safetensors" in messages and "pickle" in messages
