"""Host test: the real ComfyUI server on 127.0.0.1 with this pack; the example workflows run via POST /prompt."""

import json
import os

import pytest

import host  # skips this module without COMFYUI_PATH
from server_helpers import running_server  # noqa: E402
from subject_factory import ip_state_dict  # noqa: E402

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


SUBJECT_WORKFLOW = "subject-two-subjects-perfusion.json"
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
