"""Host test: the real ComfyUI server on 127.0.0.1 with this pack; the example workflows run via POST /prompt."""

import json
import os

import pytest

import host  # skips this module without COMFYUI_PATH
from server_helpers import running_server  # noqa: E402

pack = host.load_pack()
WORKFLOWS = os.path.join(host.ROOT, "workflows")
from workflow_api import to_api  # noqa: E402


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


@pytest.mark.parametrize("name,concepts", [("perfusion-one-concept.json", ["test_sks.safetensors"]),
                                           ("perfusion-gate-sweep.json", ["test_sks.safetensors"]),
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
