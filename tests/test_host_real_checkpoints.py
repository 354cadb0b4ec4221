"""Host test tier: Perfusion on full-size single-file checkpoints, through the real path a user takes.

A user's model is a downloaded single-file checkpoint that CheckpointLoaderSimple loads, in another
process than the one that trained the concept, often behind CLIPSetLastLayer. This tier builds such
files once per machine (tests/real_checkpoints.py: SD1.5 and SD2.1-768-v at full size, random
weights in the original key layout, float16, written by comfy.sd.save_checkpoint) and, per
checkpoint, runs two ComfyUI server processes on one temporary base folder whose models/perfusion
persists between them:

  process 1: CheckpointLoaderSimple (+ CLIPSetLastLayer -2 on SD1.5, the routine anime-checkpoint
             setting; SD2.1 at its default layer) -> Train Perfusion Concept 'sks' (2 steps, 256 px)
             -> (SD1.5) KSampler with the trainer's MODEL/CLIP, and the same seed on the bare checkpoint;
  process 2: trains 'ohwx' (other photos, another seed) on the same checkpoint, (SD1.5) samples with
             Load Rank-1 Concept on the 'sks' file at the same seed as process 1, samples with both
             concepts chained, and (SD1.5) loads the -2 concept into a CLIP at the default layer,
             which must be refused.

KSampler runs on EmptyLatentImage 256x256 (a 32x32 latent), 2 steps. PERFUSION_CAPTIONS is a 64-line
slice of data/captions.txt, so the covariance takes seconds.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

import host  # skips this module without COMFYUI_PATH
import real_checkpoints
from server_helpers import Server, free_port  # noqa: E402

FAMILIES = ("sd15", "sd2")
PACK_FAMILY = {"sd15": "sd1", "sd2": "sd2"}
CLIP_LAYER = {"sd15": -2, "sd2": None}            # None: no CLIPSetLastLayer (SD2's default is the penultimate layer)
EXPECTED_LAYER = {"sd15": "-2", "sd2": "-2"}
# The trained-vs-reloaded sampling check (3 more KSampler runs) on SD1.5 only, to keep the tier in
# minutes; it passed on SD2.1-768-v too when measured (reload error 1e-4 of the latent, effect 1.2).
REPRODUCE = ("sd15",)
CAPTIONS = 64
SEED = 7
PROMPT = "a photo of sks dog on the beach"
TWO_CONCEPTS_PROMPT = "a photo of sks dog and ohwx dog in a garden"
BUILD_SECONDS = 1200
PROMPT_SECONDS = 900
TIMINGS = {}


def log_timing(name, seconds):
    TIMINGS[name] = round(seconds, 1)
    print(f"[real checkpoints] {name}: {seconds:.1f} s", flush=True)


@pytest.fixture(scope="module")
def checkpoints():
    """family -> checkpoint path; built once per machine in a subprocess (its memory is freed before
    servers start), cached outside the repository and the ComfyUI checkout."""
    reason = real_checkpoints.refusal(FAMILIES, host.COMFYUI_PATH)
    if reason:
        pytest.skip(reason)
    started = time.time()
    done = subprocess.run([sys.executable, os.path.join(host.ROOT, "tests", "real_checkpoints.py"), *FAMILIES],
                          env=dict(os.environ, COMFYUI_PATH=host.COMFYUI_PATH), capture_output=True, text=True,
                          timeout=BUILD_SECONDS)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    refused = next((line["refused"] for line in lines if "refused" in line), None)
    if refused:
        pytest.skip(refused)
    assert done.returncode == 0, f"building the checkpoints failed:\n{done.stderr[-4000:]}"
    infos = {line["family"]: line for line in lines}
    log_timing("checkpoints ready" + (" (cached)" if all(i.get("cached") for i in infos.values()) else " (built)"),
               time.time() - started)
    return {f: infos[f]["path"] for f in FAMILIES}


# ------------------------------------------------------------------------------------------------
# graphs (API format)

def loader(graph, family):
    """Nodes 1 (CheckpointLoaderSimple) and 2 (CLIPSetLastLayer where the variant uses it); returns
    the MODEL, CLIP (at the variant's layer), VAE and default-layer CLIP references."""
    graph["1"] = {"class_type": "CheckpointLoaderSimple",
                  "inputs": {"ckpt_name": real_checkpoints.FILE_NAMES[family]}}
    clip = ["1", 1]
    if CLIP_LAYER[family] is not None:
        graph["2"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["1", 1], "stop_at_clip_layer": CLIP_LAYER[family]}}
        clip = ["2", 0]
    return ["1", 0], clip, ["1", 2], ["1", 1]


def train(graph, node, model, clip, vae, trigger, filename, seed):
    """The trigger's own photos (input/<trigger>/) and seed: two subjects, as a user's two concepts."""
    graph[node + "i"] = {"class_type": "LoadImageSetFromFolderNode", "inputs": {"folder": trigger, "resize_method": "None"}}
    graph[node] = {"class_type": "PerfusionTrainConcept", "inputs": {
        "model": model, "clip": clip, "vae": vae, "images": [node + "i", 0], "trigger": trigger, "superclass": "dog",
        "steps": 2, "batch_size": 1, "grad_accumulation": 1, "lr_embedding": 0.006, "lr_values": 0.03,
        "train_beta": 0.75, "train_tau": 0.1, "resolution": 256, "flip": True, "masked_loss": True, "seed": seed,
        "filename": filename}}
    return [node, 0], [node, 1]


def sample(graph, prefix, model, clip, text, vae=None):
    """CLIPTextEncode x2 -> KSampler (256x256 px, 2 steps, seed SEED) -> SaveLatent (and with ``vae``,
    VAEDecode -> SaveImage); node ids start with ``prefix``; returns the save nodes' ids."""
    graph[prefix + "p"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": text}}
    graph[prefix + "n"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "blurry, lowres"}}
    graph[prefix + "e"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}}
    graph[prefix + "k"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": SEED, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": [prefix + "p", 0], "negative": [prefix + "n", 0], "latent_image": [prefix + "e", 0], "denoise": 1.0}}
    graph[prefix + "l"] = {"class_type": "SaveLatent", "inputs": {"samples": [prefix + "k", 0], "filename_prefix": prefix}}
    saves = {"latent": prefix + "l"}
    if vae is not None:
        graph[prefix + "d"] = {"class_type": "VAEDecode", "inputs": {"samples": [prefix + "k", 0], "vae": vae}}
        graph[prefix + "s"] = {"class_type": "SaveImage", "inputs": {"images": [prefix + "d", 0], "filename_prefix": prefix}}
        saves["image"] = prefix + "s"
    return saves


def load_concept(graph, node, model, clip, name):
    graph[node] = {"class_type": "PerfusionLoadConcept",
                   "inputs": {"model": model, "clip": clip, "concept_name": name, "strength": 1.0}}
    return [node, 0], [node, 1]


# ------------------------------------------------------------------------------------------------
# running the two processes

class Run:
    """What the two server processes of one checkpoint produced."""

    def __init__(self, family, base):
        self.family, self.base = family, base
        self.results = {}          # name -> /history entry
        self.saves = {}            # name -> {"latent": node id, "image": node id}
        self.covariance_after_first = None

    @property
    def concepts(self):
        return self.base / "models" / "perfusion"

    def covariance_files(self):
        folder = self.concepts / "covariance"
        return sorted(p for p in folder.iterdir()) if folder.is_dir() else []

    def status(self, name):
        result = self.results.get(name)
        assert result is not None, f"{self.family}: prompt '{name}' did not run"
        return result["status"]["status_str"]

    def error(self, name):
        messages = self.results[name]["status"].get("messages", [])
        errors = [m[1] for m in messages if m[0] == "execution_error"]
        if errors:
            e = errors[0]
            return f"{e.get('node_type')}: {e.get('exception_type')}: {e.get('exception_message')}"
        return json.dumps(messages)[-2000:]

    def succeeded(self, name):
        status = self.status(name)
        assert status == "success", f"{self.family}: prompt '{name}' failed: {self.error(name)}"

    def output(self, name, kind):
        entry = self.results[name]["outputs"][self.saves[name][kind]]["latents" if kind == "latent" else "images"][0]
        return self.base / "output" / entry["subfolder"] / entry["filename"]

    def latent(self, name):
        from safetensors.torch import load_file
        return load_file(str(self.output(name, "latent")))["latent_tensor"].double()

    def image(self, name):
        import numpy as np
        from PIL import Image
        return np.asarray(Image.open(self.output(name, "image")).convert("RGB")).astype(np.float64)

    def metadata(self, filename):
        from safetensors import safe_open
        with safe_open(str(self.concepts / filename), framework="pt") as f:
            return dict(f.metadata() or {})


def prepare_base(base, family):
    (base / "custom_nodes").mkdir()
    os.symlink(host.ROOT, base / "custom_nodes" / "ComfyUI-Perfusion")
    (base / "models" / "perfusion").mkdir(parents=True)
    for d in ("output", "temp", "input", "user"):
        (base / d).mkdir()
    (base / "extra_model_paths.yaml").write_text(
        f"perfusion_real_checkpoints:\n    base_path: {base}\n    custom_nodes: custom_nodes\n"
        f"    perfusion: models/perfusion\n    checkpoints: {real_checkpoints.cache_dir()}\n")
    with open(os.path.join(host.ROOT, "data", "captions.txt"), encoding="utf-8") as f:
        (base / "captions_subset.txt").write_text("".join(f.readlines()[:CAPTIONS]))
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(5)
    ys, xs = np.mgrid[0:256, 0:256]
    # two subjects, two photos each: a brown and a white "dog" blob on a textured background
    for trigger, colour in (("sks", (150, 100, 50)), ("ohwx", (225, 225, 215))):
        photos = base / "input" / trigger
        photos.mkdir()
        for k in range(2):
            img = rng.integers(0, 90, (256, 256, 3)).astype(np.uint8) + np.array([40, 90, 40], np.uint8)
            blob = ((xs - 110 - 40 * k) / 70.0) ** 2 + ((ys - 130 + 20 * k) / 55.0) ** 2 <= 1
            img[blob] = np.array(colour, np.uint8) + rng.integers(0, 30, (int(blob.sum()), 3)).astype(np.uint8)
            Image.fromarray(img).save(photos / f"photo{k}.png")


class Process:
    def __init__(self, run, label):
        self.run, self.label = run, label

    def __enter__(self):
        started = time.time()
        self.server = Server(self.run.base, free_port())
        self.server.wait_ready(seconds=180)
        log_timing(f"{self.run.family} {self.label}: server start", time.time() - started)
        return self

    def prompt(self, name, graph, saves=None):
        started = time.time()
        try:
            self.run.results[name] = self.server.run(graph, seconds=PROMPT_SECONDS)
        except AssertionError as e:
            if "did not finish" in str(e):
                raise
            # refused before running (POST /prompt answered 400, e.g. a concept file that is missing)
            self.run.results[name] = {"outputs": {}, "status": {"status_str": "refused", "messages": [
                ["execution_error", {"node_type": "POST /prompt", "exception_type": "validation",
                                     "exception_message": str(e)[:3000]}]]}}
        self.run.saves[name] = saves or {}
        log_timing(f"{self.run.family} {self.label}: {name} ({self.run.results[name]['status']['status_str']})",
                   time.time() - started)

    def __exit__(self, *exc):
        try:                                       # CPU seconds: comparable when other work shares the cores
            with open(f"/proc/{self.server.process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            log_timing(f"{self.run.family} {self.label}: server CPU time",
                       (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        except (OSError, IndexError, ValueError):
            pass
        self.server.stop()
        shutil.copy(self.run.base / "server.log", self.run.base / f"server-{self.label}.log")


def first_process(run):
    family = run.family
    graph = {}
    model, clip, vae, _ = loader(graph, family)
    trained_model, trained_clip = train(graph, "10", model, clip, vae, "sks", f"sks_{family}", seed=0)
    if family in REPRODUCE:
        saves = sample(graph, "trained", trained_model, trained_clip, PROMPT, vae)
        base_saves = sample(graph, "base", model, clip, PROMPT, vae)
    with Process(run, "process1") as p:
        p.prompt("train_sks", graph)
    if family in REPRODUCE:
        run.saves["trained"], run.saves["base"] = saves, base_saves
        run.results["trained"] = run.results["base"] = run.results["train_sks"]
    files = run.covariance_files()
    if len(files) == 1:
        st = files[0].stat()
        run.covariance_after_first = (files[0].name, st.st_ino, st.st_mtime_ns)


def second_process(run):
    family = run.family
    with Process(run, "process2") as p:
        graph = {}
        model, clip, vae, default_clip = loader(graph, family)
        train(graph, "10", model, clip, vae, "ohwx", f"ohwx_{family}", seed=1)
        p.prompt("train_ohwx", graph)

        if family in REPRODUCE:
            graph = {}
            model, clip, vae, default_clip = loader(graph, family)
            m, c = load_concept(graph, "20", model, clip, f"sks_{family}.safetensors")
            p.prompt("loaded", graph, sample(graph, "loaded", m, c, PROMPT, vae))

        graph = {}
        model, clip, vae, default_clip = loader(graph, family)
        m, c = load_concept(graph, "20", model, clip, f"sks_{family}.safetensors")
        m, c = load_concept(graph, "21", m, c, f"ohwx_{family}.safetensors")
        p.prompt("two_concepts", graph, sample(graph, "both", m, c, TWO_CONCEPTS_PROMPT, vae))

        if CLIP_LAYER[family] is not None:        # the concept trained at -2, into the CLIP at its default layer
            graph = {}
            model, clip, vae, default_clip = loader(graph, family)
            m, c = load_concept(graph, "20", model, default_clip, f"sks_{family}.safetensors")
            p.prompt("other_layer", graph, sample(graph, "other", m, c, PROMPT, vae))


_RUNS = {}


@pytest.fixture(scope="module")
def runs(checkpoints, tmp_path_factory):
    def get(family):
        if family not in _RUNS:
            run = Run(family, tmp_path_factory.mktemp(f"real_{family}"))
            prepare_base(run.base, family)
            started = time.time()
            try:
                first_process(run)
                second_process(run)
            finally:
                _RUNS[family] = run
                log_timing(f"{family}: both processes", time.time() - started)
        return _RUNS[family]
    yield get
    _RUNS.clear()


# ------------------------------------------------------------------------------------------------
# the tests

@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_file_has_a_real_layout(checkpoints, family):
    """The header of the built file: the original single-file key layout, float16, and (SD1.5) no
    CLIP-L text_projection, as in a downloaded v1-5 file."""
    from safetensors import safe_open
    with safe_open(checkpoints[family], framework="pt") as f:
        keys = list(f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    parts = {p: [k for k in keys if k.startswith(p)] for p in ("model.diffusion_model.", "cond_stage_model.", "first_stage_model.")}
    assert sum(map(len, parts.values())) == len(keys) and all(parts.values())
    assert dtypes == {"F16"}
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in keys
    with safe_open(checkpoints[family], framework="pt") as f:
        to_k = f.get_slice("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight").get_shape()
    if family == "sd15":
        assert to_k == [320, 768]
        assert all(k.startswith("cond_stage_model.transformer.text_model.") for k in parts["cond_stage_model."])
        assert not [k for k in keys if "text_projection" in k]
    else:
        assert to_k == [320, 1024]
        assert all(k.startswith("cond_stage_model.model.") for k in parts["cond_stage_model."])
        assert "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight" in keys


@pytest.mark.parametrize("family", FAMILIES)
def test_training_runs_on_the_checkpoint_in_both_processes(runs, family):
    run = runs(family)
    run.succeeded("train_sks")
    run.succeeded("train_ohwx")
    for trigger in ("sks", "ohwx"):
        assert (run.concepts / f"{trigger}_{family}.safetensors").is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_concepts_record_the_model_and_the_clip_layer(runs, family):
    run = runs(family)
    run.succeeded("train_sks")
    for trigger in ("sks", "ohwx"):
        path = run.concepts / f"{trigger}_{family}.safetensors"
        assert path.is_file(), f"{family}: {path.name} was not written ({run.error('train_' + trigger)})"
        meta = run.metadata(path.name)
        assert meta["perfusion.model"] == PACK_FAMILY[family]
        assert meta["perfusion.trigger"] == trigger and meta["perfusion.superclass"] == "dog"
        assert meta.get("perfusion.clip_layer") == EXPECTED_LAYER[family], {k: v for k, v in meta.items() if "layer" in k}
        shrinkage = float(meta["perfusion.covariance_shrinkage"])
        condition = float(meta["perfusion.covariance_condition"])
        assert 0.0 <= shrinkage <= 1.0
        assert 1.0 <= condition < float("inf")


@pytest.mark.parametrize("family", FAMILIES)
def test_one_covariance_cache_for_the_checkpoint_across_processes(runs, family):
    """The same checkpoint in two processes is one text encoder: one cache key, one file, and the
    second process reads it instead of computing it again."""
    run = runs(family)
    run.succeeded("train_sks")
    files = run.covariance_files()
    assert len(files) == 1, f"{family}: expected one covariance cache file, found {len(files)}: {[p.name for p in files]}"
    st = files[0].stat()
    assert run.covariance_after_first == (files[0].name, st.st_ino, st.st_mtime_ns), \
        "the second process wrote the covariance again instead of reusing the first one's file"
    from safetensors import safe_open
    with safe_open(str(files[0]), framework="pt") as f:
        key = (f.metadata() or {}).get("perfusion.covariance_sha256")
    assert run.metadata(f"sks_{family}.safetensors")["perfusion.covariance_sha256"] == key


@pytest.mark.parametrize("family", FAMILIES)
def test_second_process_concept_shares_the_first_ones_covariance(runs, family):
    run = runs(family)
    run.succeeded("train_sks")
    run.succeeded("train_ohwx")
    first = run.metadata(f"sks_{family}.safetensors")["perfusion.covariance_sha256"]
    second = run.metadata(f"ohwx_{family}.safetensors")["perfusion.covariance_sha256"]
    assert first == second, f"{family}: covariance keys differ between the two processes: {first} vs {second}"


@pytest.mark.parametrize("family", REPRODUCE)
def test_reloaded_file_reproduces_the_trained_model(runs, family):
    """Process 1 samples with the trainer's MODEL/CLIP outputs, process 2 with Load Rank-1 Concept on
    the saved file, same seed. The file stores float16, so they are close, not bit-identical; 'close'
    is measured against what the concept changes (the same seed on the bare checkpoint): the
    reload error must be a small fraction of the concept's effect, in the latent and in the image."""
    run = runs(family)
    run.succeeded("train_sks")
    run.succeeded("loaded")
    trained, loaded, bare = run.latent("trained"), run.latent("loaded"), run.latent("base")
    assert trained.shape == (1, 4, 32, 32)
    effect = float((trained - bare).norm() / bare.norm())
    error = float((loaded - trained).norm() / trained.norm())
    print(f"[real checkpoints] {family}: concept effect on the latent {effect:.4g}, reload error {error:.4g}")
    assert effect > 1e-3, f"{family}: the concept does not change the sample ({effect:.3g}); the check would be empty"
    assert error < 0.05 * effect, f"{family}: the reloaded concept gives another sample: error {error:.3g}, effect {effect:.3g}"
    trained_px, loaded_px, bare_px = run.image("trained"), run.image("loaded"), run.image("base")
    assert trained_px.shape == (256, 256, 3) and trained_px.std() > 1.0          # not a flat image
    pixel_effect = abs(trained_px - bare_px).mean()
    pixel_error = abs(loaded_px - trained_px).mean()
    print(f"[real checkpoints] {family}: mean |pixel| effect {pixel_effect:.3g}, reload error {pixel_error:.3g} (of 255)")
    assert pixel_error <= max(0.1 * pixel_effect, 0.5), (pixel_error, pixel_effect)


@pytest.mark.parametrize("family", FAMILIES)
def test_two_concepts_from_two_processes_sample_together(runs, family):
    run = runs(family)
    run.succeeded("train_sks")
    run.succeeded("train_ohwx")
    run.succeeded("two_concepts")
    assert run.output("two_concepts", "image").is_file()
    assert run.latent("two_concepts").isfinite().all()


def test_concept_trained_at_layer_minus_2_is_refused_at_the_default_layer(runs):
    run = runs("sd15")
    run.succeeded("train_sks")
    assert run.status("other_layer") == "error", "a concept trained at CLIP layer -2 loaded into a default-layer CLIP"
    message = run.error("other_layer")
    assert "sks_sd15.safetensors" in message or "'sks'" in message, message
    assert re.search(r"layer -2\b", message) and re.search(r"layer (-1|last)\b", message), message
