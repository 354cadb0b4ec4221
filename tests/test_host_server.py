"""Host test: the real ComfyUI server on 127.0.0.1 with this pack; the example workflows run via POST /prompt."""

import io
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

import host  # skips this module without COMFYUI_PATH
import server_helpers  # noqa: E402
from server_helpers import running_server  # noqa: E402
from subject_factory import ip_state_dict  # noqa: E402

pack = host.load_pack()
WORKFLOWS = os.path.join(host.ROOT, "workflows")
from workflow_api import to_api  # noqa: E402

# The templates' file names are their titles in Browse Templates (the frontend shows nothing else).
TRAIN_CONCEPT = "Perfusion - Train a Concept from Photos.json"
ONE_CONCEPT = "Perfusion - Generate with One Concept.json"
TWO_CONCEPTS = "Perfusion - Two Concepts in One Image.json"
GATE_SWEEP = "Perfusion - Gate Sweep Grid.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("comfy_server")) as s:
        yield s


def test_server_lists_the_nodes(server):
    info = server.get("/object_info")
    load, gate = info["PerfusionLoadConcept"], info["PerfusionGateStrength"]
    assert load["display_name"] == "Load Rank-1 Concept" and gate["display_name"] == "Gate Strength"
    assert load["category"] == "perfusion" and load["output"] == ["MODEL", "CLIP"]
    assert set(load["input"]["required"]["concept_name"][0]) == {"test_sks.safetensors", "test_ohwx.safetensors"}
    assert gate["input"]["required"]["beta"][1]["display"] == "slider"
    assert set(server.get("/models/perfusion")) == {"test_sks.safetensors", "test_ohwx.safetensors"}
    assert "ComfyUI-Perfusion" in server.get("/workflow_templates")


def test_ui_routes(server):
    concepts = {c["name"]: c for c in server.get("/perfusion/concepts")}
    sks = concepts["test_sks.safetensors"]
    assert (sks["trigger"], sks["superclass"], sks["model"], sks["format"]) == ("sks", "dog", "sd1", "1")
    assert sks["size"] > 1000 and sks["steps"] == "400"
    assert not any(name.startswith("covariance") for name in concepts)
    assert server.get("/perfusion/checkpoint_family?name=fake_sdxl.safetensors")["family"] == "sdxl"
    assert server.get("/perfusion/checkpoint_family?name=fake_sd15.safetensors") == \
        {"name": "fake_sd15.safetensors", "family": "sd1", "context_dim": 768}
    assert server.get("/perfusion/checkpoint_family?name=missing.safetensors")["family"] is None


def tiny(workflow, concepts):
    """The example workflow on the tiny model: checkpoint loader swapped, concept names set, small and fast."""
    api = to_api(workflow, host_object_info[0])
    names = iter(concepts)
    for node in api.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node.update(class_type="PerfusionTest_TinyCheckpoint", inputs={"family": "sd1"})
        elif node["class_type"] == "CLIPVisionLoader":
            node.update(class_type="PerfusionTest_TinyClipVision", inputs={})
        elif node["class_type"] == "PerfusionLoadConcept":
            node["inputs"]["concept_name"] = next(names)
        elif node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        elif node["class_type"] in ("KSampler", "PerfusionGateSweep"):
            node["inputs"]["steps"] = 2
        elif node["class_type"] == "LoadImageSetFromFolderNode":
            node["inputs"]["folder"] = "test_subject"
        elif node["class_type"] == "PerfusionTrainConcept":
            node["inputs"].update(steps=2, batch_size=1, grad_accumulation=1, resolution=64, filename="served_concept")
    return api


host_object_info = []


@pytest.mark.parametrize("name,concepts", [(ONE_CONCEPT, ["test_sks.safetensors"]),
                                           (GATE_SWEEP, ["test_sks.safetensors"]),
                                           (TWO_CONCEPTS, ["test_sks.safetensors", "test_ohwx.safetensors"])])
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
    workflow = json.load(open(os.path.join(WORKFLOWS, TRAIN_CONCEPT)))
    result = server.run(tiny(workflow, []), seconds=300)
    assert result["status"]["status_str"] == "success", result["status"]
    assert (server.base / "models" / "perfusion" / "served_concept.safetensors").is_file()
    assert "served_concept.safetensors" in server.get("/object_info/PerfusionLoadConcept")[
        "PerfusionLoadConcept"]["input"]["required"]["concept_name"][0]                      # no restart needed
    saved = [img for out in result["outputs"].values() for img in out.get("images", [])]
    assert len(saved) == 3                      # the sample, the loss curve on the node, and in PreviewImage
    train_id = next(k for k, n in tiny(workflow, []).items() if n["class_type"] == "PerfusionTrainConcept")
    assert result["outputs"][train_id]["images"][0]["filename"].startswith("perfusion_loss")
    before = (server.base / "models" / "perfusion" / "served_concept.safetensors").read_bytes()
    rerun = tiny(workflow, [])                                    # another seed, same filename: refused
    next(n for n in rerun.values() if n["class_type"] == "PerfusionTrainConcept")["inputs"]["seed"] = 1
    again = server.run(rerun)
    assert again["status"]["status_str"] == "error" and "already exists" in json.dumps(again["status"]["messages"])
    assert (server.base / "models" / "perfusion" / "served_concept.safetensors").read_bytes() == before


def test_out_of_range_slider_is_refused_before_running(server):
    if not host_object_info:
        host_object_info.append(server.get("/object_info"))
    api = tiny(json.load(open(os.path.join(WORKFLOWS, ONE_CONCEPT))), ["test_sks.safetensors"])
    gate = next(n for n in api.values() if n["class_type"] == "PerfusionGateStrength")
    gate["inputs"]["beta"] = 5.0
    status, body = server.post("/prompt", {"prompt": api})
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"


def test_bad_concept_file_fails_with_the_message(server):
    if not host_object_info:
        host_object_info.append(server.get("/object_info"))
    (server.base / "models" / "perfusion" / "broken.safetensors").write_bytes(b"\x80\x04.")
    api = tiny(json.load(open(os.path.join(WORKFLOWS, ONE_CONCEPT))), ["broken.safetensors"])
    result = server.run(api)
    assert result["status"]["status_str"] == "error"
    messages = json.dumps(result["status"]["messages"])
    assert "broken.safetensors" in messages and "pickle" in messages


SUBJECT_WORKFLOW = "Perfusion - Two Subject Photos and a Concept.json"
IP_PLUS = "ip-adapter-plus_sd15.safetensors"


def subject_photo(path, seed, size=(56, 48)):
    """A small photo as ComfyUI's Mask Editor saves it after the subject was painted: alpha 0 on the
    subject (an ellipse), 255 elsewhere, so LoadImage's MASK (1 - alpha) is white on the subject."""
    import numpy as np
    from PIL import Image
    width, height = size
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    subject = ((xs - width * 0.55) / (width * 0.3)) ** 2 + ((ys - height * 0.5) / (height * 0.35)) ** 2 <= 1
    alpha = np.where(subject, 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)


@pytest.fixture(scope="module")
def subject_files(server):
    """The IP-Adapter-Plus file for the tiny SD1.5 model (the same widths as PerfusionTest_TinyCheckpoint's),
    written in fp16 under the name the workflow uses, and the workflow's two subject photos."""
    from safetensors.torch import save_file
    folder = server.base / "models" / "ipadapter"          # registered by the test pack
    folder.mkdir(parents=True, exist_ok=True)
    tensors = ip_state_dict(pack, host.tiny_model("sd1"), "plus", seed=3)
    save_file({k: v.half().contiguous() for k, v in tensors.items()}, str(folder / IP_PLUS))
    workflow = json.load(open(os.path.join(WORKFLOWS, SUBJECT_WORKFLOW)))
    photos = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "LoadImage"]
    for k, name in enumerate(photos):
        subject_photo(server.base / "input" / name, seed=k)
    return workflow


def test_subject_workflow_runs(server, subject_files):
    if not host_object_info:
        host_object_info.append(server.get("/object_info"))
    info = server.get("/object_info")
    assert info["SubjectReferenceEncoder"]["display_name"] == "Subject Reference Encoder"
    assert "ipadapter/" + IP_PLUS in info["SubjectReferenceLoader"]["input"]["required"]["adapter_name"][0]
    assert SUBJECT_WORKFLOW[:-5] in server.get("/workflow_templates")["ComfyUI-Perfusion"]
    api = tiny(subject_files, ["test_sks.safetensors"])
    kinds = sorted(n["class_type"] for n in api.values())
    assert "CLIPVisionLoader" not in kinds and kinds.count("LoadImage") == 2
    assert kinds.count("SubjectReferenceEncoder") == 2 and "PerfusionLoadConcept" in kinds
    encoders = [n for n in api.values() if n["class_type"] == "SubjectReferenceEncoder"]
    assert all(isinstance(n["inputs"]["subject_mask"], list) for n in encoders)          # LoadImage's MASK
    assert sum(isinstance(n["inputs"].get("subjects"), list) for n in encoders) == 1     # chained

    def run(api):
        result = server.run(api)
        assert result["status"]["status_str"] == "success", result["status"]
        images = [img for out in result["outputs"].values() for img in out.get("images", [])]
        assert len(images) == 1 and images[0]["filename"].endswith(".png")
        path = server.base / "output" / images[0]["subfolder"] / images[0]["filename"]
        assert path.is_file()
        from PIL import Image
        return Image.open(path).tobytes()

    with_subjects = run(api)
    for node in encoders:
        node["inputs"]["weight"] = 0.0                    # the same graph with both subjects switched off
    assert run(api) != with_subjects


PACK_NODES = sorted(pack.nodes.NODE_CLASS_MAPPINGS)


def test_every_input_and_output_of_every_pack_node_has_a_tooltip(server):
    info = server.get("/object_info")
    missing = []
    for name in PACK_NODES:
        node = info[name]
        for group in ("required", "optional"):
            for input_name, spec in node["input"].get(group, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not str(options.get("tooltip", "")).strip():
                    missing.append(f"{name}.{input_name}")
        tips = node.get("output_tooltips") or []
        if len(tips) != len(node["output"]) or not all(str(t).strip() for t in tips):
            missing.append(f"{name} outputs ({len(tips)} tooltips for {len(node['output'])} outputs)")
        if not node.get("description", "").strip():
            missing.append(f"{name} description")
    assert missing == [], missing


def test_trainers_keep_their_seed_fixed(server):
    """No "control after generate" widget (the frontend adds one to every INT named seed unless the
    input says control_after_generate: false): a Queue after training must not retrain with a new seed."""
    info = server.get("/object_info")
    for name in ("PerfusionTrainConcept", "SubjectReferenceTrain"):
        assert info[name]["input"]["required"]["seed"][1]["control_after_generate"] is False, name


def test_every_template_has_the_thumbnail_the_frontend_asks_for(server):
    """Browse Templates asks for /api/workflow_templates/<pack folder>/<template>.jpg (frontend 1.27.10,
    getTemplateThumbnailUrl: mediaSubtype "jpg" for custom-node templates)."""
    from urllib.parse import quote

    from PIL import Image
    names = server.get("/workflow_templates")["ComfyUI-Perfusion"]
    assert sorted(names) == sorted(f[:-5] for f in os.listdir(WORKFLOWS) if f.endswith(".json"))
    for name in names:
        url = f"{server.url}/api/workflow_templates/ComfyUI-Perfusion/{quote(name)}.jpg"
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg", (name, r.headers["Content-Type"])
            image = Image.open(io.BytesIO(r.read()))
        assert image.format == "JPEG" and min(image.size) >= 256, (name, image.size)


def test_folders_route_names_where_files_go(server):
    folders = server.get("/perfusion/folders")
    assert folders["perfusion"]["paths"][0] == str(server.base / "models" / "perfusion")
    assert folders["subject_ref"]["paths"][0] == str(server.base / "models" / "subject_ref")
    assert folders["perfusion"]["files"] >= 2 and set(folders) == {"perfusion", "subject_ref", "ipadapter"}


def test_the_pack_creates_its_model_folders_on_start(tmp_path):
    """A fresh ComfyUI (its own --base-directory here) gets models/perfusion and models/subject_ref, empty,
    in the first folder folder_paths lists for each; no other folder."""
    (tmp_path / "custom_nodes").mkdir()
    os.symlink(host.ROOT, tmp_path / "custom_nodes" / "ComfyUI-Perfusion")
    port = server_helpers.free_port()
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen([sys.executable, "main.py", *host.SERVER_FLAGS, "--listen", "127.0.0.1", "--port", str(port),
                                "--base-directory", str(tmp_path), "--disable-api-nodes", "--disable-auto-launch",
                                "--database-url", "sqlite:///:memory:"],
                               cwd=host.COMFYUI_PATH, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/perfusion/folders", timeout=5) as r:
                    folders = json.loads(r.read())
                break
            except OSError:
                assert process.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    for kind in ("perfusion", "subject_ref"):
        folder = tmp_path / "models" / kind
        assert folder.is_dir() and not any(folder.iterdir()), kind
        assert folders[kind]["paths"][0] == str(folder) and folders[kind]["files"] == 0
    assert not (tmp_path / "models" / "ipadapter").exists()          # another pack's folder: not ours to make


def run_with_events(server, prompt, seconds=300):
    """Runs a prompt as the browser's client does and returns (history entry, the websocket messages)."""
    import asyncio

    import aiohttp

    async def main():
        events = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(server.url.replace("http://", "ws://") + "/ws?clientId=perfusion-test") as ws:
                task = asyncio.get_running_loop().run_in_executor(None, server.run, prompt, seconds)
                while not task.done():
                    try:
                        message = await ws.receive(timeout=0.5)
                    except asyncio.TimeoutError:
                        continue
                    if message.type == aiohttp.WSMsgType.TEXT:
                        events.append(json.loads(message.data))
                    elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
                return await task, events
    return asyncio.run(main())


def trainer_prompt(kind):
    """Tiny model, the three test photos, two steps of either trainer (node "9")."""
    prompt = {"1": {"class_type": "PerfusionTest_TinyCheckpoint", "inputs": {"family": "sd1"}},
              "2": {"class_type": "LoadImageSetFromFolderNode", "inputs": {"folder": "test_subject", "resize_method": "None"}}}
    if kind == "PerfusionTrainConcept":
        prompt["9"] = {"class_type": kind, "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "trigger": "sks", "superclass": "dog",
            "steps": 2, "batch_size": 1, "grad_accumulation": 1, "lr_embedding": 0.006, "lr_values": 0.03,
            "train_beta": 0.75, "train_tau": 0.1, "resolution": 64, "flip": True, "masked_loss": True, "seed": 0,
            "filename": "progress_concept"}}
    else:
        prompt["3"] = {"class_type": "PerfusionTest_TinyClipVision", "inputs": {}}
        prompt["7"] = {"class_type": "ImageToMask", "inputs": {"image": ["2", 0], "channel": "red"}}   # the whole photo
        prompt["9"] = {"class_type": kind, "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "clip_vision": ["3", 0], "vae": ["1", 2], "images": ["2", 0],
            "masks": ["7", 0], "captions": "a photo of a toy <subject1>", "steps": 2, "lr": 0.0001, "batch_size": 1,
            "preset": "lite", "seed": 0, "filename": "progress_adapter", "resolution": 64}}
    return prompt


@pytest.mark.parametrize("kind", ["PerfusionTrainConcept", "SubjectReferenceTrain"])
def test_trainers_send_step_and_loss_to_their_node(server, kind):
    """The perfusion.train websocket event that web/perfusion.js draws on the node: one per step, naming the
    running node, to the client that queued the prompt."""
    result, events = run_with_events(server, trainer_prompt(kind))
    assert result["status"]["status_str"] == "success", result["status"]
    progress = [e["data"] for e in events if e.get("type") == "perfusion.train"]
    assert [(p["node"], p["step"], p["steps"]) for p in progress] == [("9", 1, 2), ("9", 2, 2)], progress
    assert all(isinstance(p["loss"], float) and p["loss"] == p["loss"] for p in progress)
