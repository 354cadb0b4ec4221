"""A real ComfyUI server on 127.0.0.1 for host tests: this pack and the tiny-model test pack loaded,
concept files for the tiny model, a photo folder, all in a temporary base folder."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import host

pack = host.load_pack()
TESTS = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base, port):
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(base / "server.log", "w")
        # --base-directory: models/ and custom_nodes/ are the temporary folder's, so the pack's model folders
        # (made at start) land there, never in the ComfyUI checkout, and a pack cloned into the checkout's
        # custom_nodes/ is not loaded a second time beside the one given here.
        cmd = [sys.executable, "main.py", *host.SERVER_FLAGS, "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
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


@contextlib.contextmanager
def running_server(base):
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
        f"perfusion_test:\n    base_path: {base}\n    custom_nodes: custom_nodes\n    perfusion: models/perfusion\n"
        "    checkpoints: models/checkpoints\n    ipadapter: models/ipadapter\n    subject_ref: models/subject_ref\n")
    for folder in ("ipadapter", "subject_ref"):
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
    # header-only stand-ins for real checkpoints: the UI reads a checkpoint's family from its header
    checkpoints = base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    import torch
    from safetensors.torch import save_file
    probe = "model.diffusion_model.input_blocks.{}.1.transformer_blocks.0.attn2.to_k.weight"
    save_file({probe.format(4): torch.zeros(640, 2048, dtype=torch.float16)}, str(checkpoints / "fake_sdxl.safetensors"))
    save_file({probe.format(1): torch.zeros(320, 768, dtype=torch.float16)}, str(checkpoints / "fake_sd15.safetensors"))
    for d in ("output", "temp", "input", "user"):
        (base / d).mkdir(exist_ok=True)
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


