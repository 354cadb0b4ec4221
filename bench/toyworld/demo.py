"""The no-download demo: starts a real ComfyUI server with this pack and the toy world's model, trains a
Perfusion concept through the server (Train Perfusion Concept), renders Gate Sweep grids, samples a beta
sweep through Load Rank-1 Concept + Gate Strength + KSampler, and scores the samples with the toy world's
evaluator into a fidelity / editability plot.

    COMFYUI_PATH=... bash scripts/try-toyworld.sh [--out toyworld-demo] [--steps 200]

Outputs in ``--out``: gate_sweep_*.png (the node's grids), fidelity_editability.png, samples.png and
demo.json. Nothing is written into the ComfyUI folder: the server runs on a temporary base directory.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCH)
CONCEPT = "striped-circle"     # where Perfusion draws the concept most often in the benchmark (docs/toyworld/report.md)
TRIGGER = "sks"
BETAS = (0.0, 0.4, 0.7, 1.0, 1.4, 2.0)
SAMPLER = {"steps": 20, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"}
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
from toyworld import benchmark, world                                       # noqa: E402

EDIT_BACKGROUND = benchmark.EDIT_BACKGROUND[CONCEPT]     # a colour none of the references has
SUPERCLASS = next(c for c in world.CONCEPTS if c.name == CONCEPT).superclass
PROMPTS = {"alone": "a photo of a {}", "background": f"a photo of a {{}} on a {EDIT_BACKGROUND} background",
           "small": "a photo of a small {}"}     # the trainer's template prefix, as in the benchmark


class Server:
    def __init__(self, base, comfyui):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url, self.base = f"http://127.0.0.1:{port}", base
        self.log = open(os.path.join(base, "server.log"), "w")
        cpu = [] if _has_cuda() else ["--cpu"]
        cmd = [sys.executable, "main.py", *cpu, "--listen", "127.0.0.1", "--port", str(port), "--base-directory", base,
               "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:"]
        from toyworld import graph
        env = {**os.environ, "PERFUSION_CAPTIONS": graph.world_corpus()}     # C over the world's captions
        self.process = subprocess.Popen(cmd, cwd=comfyui, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def request(self, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{path}: {e.code} {e.read().decode()[:2000]}") from None

    def wait_ready(self, seconds=180):
        deadline = time.time() + seconds
        while time.time() < deadline and self.process.poll() is None:
            try:
                return self.request("/system_stats")
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("ComfyUI did not start; its log:\n" + self.tail())

    def run(self, prompt, what, seconds=1800):
        prompt_id = self.request("/prompt", {"prompt": prompt, "client_id": "toyworld-demo"})["prompt_id"]
        start, deadline = time.time(), time.time() + seconds
        while time.time() < deadline:
            entry = self.request(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry["status"].get("completed") is not None:
                if entry["status"].get("status_str") != "success":
                    raise RuntimeError(f"{what} failed: {json.dumps(entry['status'])[:3000]}")
                print(f"  {what}: {time.time() - start:.0f} s", flush=True)
                return entry
            time.sleep(0.5)
        raise RuntimeError(f"{what} did not finish in {seconds} s; log:\n" + self.tail())

    def tail(self):
        self.log.flush()
        return open(os.path.join(self.base, "server.log")).read()[-4000:]

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def _has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def scratch_base():
    """A temporary ComfyUI base directory: the pack and the toy-world nodes in custom_nodes/, and the
    covariance cache of the toy CLIP kept across runs in ~/.cache."""
    base = tempfile.mkdtemp(prefix="toyworld-demo-")
    nodes = os.path.join(base, "custom_nodes")
    os.makedirs(nodes)
    os.symlink(ROOT, os.path.join(nodes, "ComfyUI-Perfusion"))
    os.symlink(os.path.join(HERE, "comfy_nodes"), os.path.join(nodes, "toyworld_nodes"))
    concepts = os.path.join(base, "models", "perfusion")
    os.makedirs(concepts)
    cache = os.path.join(os.path.expanduser("~"), ".cache", "comfyui-perfusion-toyworld", "covariance")
    os.makedirs(cache, exist_ok=True)
    os.symlink(cache, os.path.join(concepts, "covariance"))
    return base


def train_graph(steps, filename):
    g = {"1": {"class_type": "ToyWorldModel", "inputs": {}},
         "2": {"class_type": "ToyWorldReferences", "inputs": {"concept": CONCEPT}},
         "3": {"class_type": "PerfusionTrainConcept", "inputs": {
             "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "trigger": TRIGGER,
             "superclass": ["2", 1], "steps": steps, "batch_size": 4, "grad_accumulation": 2, "lr_embedding": 0.006,
             "lr_values": 0.03, "train_beta": 0.75, "train_tau": 0.1, "resolution": 64, "flip": False,
             "masked_loss": False, "seed": 0, "filename": filename}},
         "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 1], "text": ""}},
         "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    for k, (name, text) in enumerate(PROMPTS.items()):
        g[f"p{k}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 1], "text": text.format(TRIGGER)}}
        g[f"s{k}"] = {"class_type": "PerfusionGateSweep", "inputs": {
            "model": ["3", 0], "vae": ["1", 2], "positive": [f"p{k}", 0], "negative": ["4", 0], "latent_image": ["5", 0],
            "seed": 7, **SAMPLER, "trigger": TRIGGER, "betas": ", ".join(f"{b:g}" for b in BETAS), "strengths": "1.0, 0.5",
            "tau": 0.15}}
        g[f"v{k}"] = {"class_type": "SaveImage", "inputs": {"images": [f"s{k}", 0], "filename_prefix": f"gate_sweep_{name}"}}
    return g


def score_graph(filename, samples):
    """Per beta: Load Rank-1 Concept -> Gate Strength -> KSampler (``samples`` images) per prompt; the base
    model with the superclass word as the reference point."""
    g = {"1": {"class_type": "ToyWorldModel", "inputs": {}},
         "2": {"class_type": "ToyWorldReferences", "inputs": {"concept": CONCEPT}},
         "L": {"class_type": "PerfusionLoadConcept", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                                "concept_name": filename, "strength": 1.0}},
         "E": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": samples}},
         "N": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["L", 1], "text": ""}}}
    runs = [(f"b{b:g}", ["L", 1], b) for b in BETAS] + [("base", ["1", 1], None)]
    for tag, clip, beta in runs:
        model = ["1", 0]
        if beta is not None:
            g[f"G{tag}"] = {"class_type": "PerfusionGateStrength", "inputs": {
                "model": ["L", 0], "trigger": TRIGGER, "beta": beta, "tau": 0.15, "strength": 1.0, "key_lock": "local",
                "start_percent": 0.0, "end_percent": 1.0}}
            model = [f"G{tag}", 0]
        word = TRIGGER if beta is not None else SUPERCLASS
        for k, (name, text) in enumerate(PROMPTS.items()):
            p, s, d = f"P{tag}{k}", f"K{tag}{k}", f"D{tag}{k}"
            g[p] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": text.format(word)}}
            g[s] = {"class_type": "KSampler", "inputs": {"model": model, "seed": 100 + k, **SAMPLER, "positive": [p, 0],
                                                         "negative": ["N", 0], "latent_image": ["E", 0], "denoise": 1.0}}
            g[d] = {"class_type": "VAEDecode", "inputs": {"samples": [s, 0], "vae": ["1", 2]}}
            g[f"S{tag}{k}"] = {"class_type": "SaveImage", "inputs": {"images": [d, 0], "filename_prefix": f"score_{tag}_{name}"}}
    return g


def read_images(output, prefix):
    import numpy
    from PIL import Image
    files = sorted(glob.glob(os.path.join(output, f"{prefix}_*.png")))
    if not files:
        raise RuntimeError(f"no images saved as {prefix}_*.png in {output}")
    return numpy.stack([numpy.asarray(Image.open(f).convert("RGB"), dtype=numpy.float32) / 255 for f in files])


def evaluate(output, samples):
    """Fidelity and editability per beta, from the saved samples."""
    import torch
    from toyworld import evaluator
    net = evaluator.load()
    concept = next(c for c in world.ALL_CONCEPTS if c.name == CONCEPT)
    target = world.ALL_CONCEPTS.index(concept) + 1
    rows, grid_rows = {}, []
    for tag in [f"b{b:g}" for b in BETAS] + ["base"]:
        images = {name: torch.from_numpy(read_images(output, f"score_{tag}_{name}")) for name in PROMPTS}
        read = {name: evaluator.read(net, im) for name, im in images.items()}
        fid = {name: float(r["concept"][:, target].mean()) for name, r in read.items()}
        edit_bg = float((read["background"]["background"].argmax(1) == world.COLOUR_NAMES.index(EDIT_BACKGROUND)).float().mean())
        edit_small = float((read["small"]["size"].argmax(1) == world.SIZES.index("small")).float().mean())
        rows[tag] = {"fidelity_alone": fid["alone"], "fidelity_edits": (fid["background"] + fid["small"]) / 2,
                     "editability": (edit_bg + edit_small) / 2, "edit_background": edit_bg, "edit_small": edit_small}
        grid_rows += [(images[name], f"{tag}: {PROMPTS[name].format(TRIGGER if tag != 'base' else SUPERCLASS)}")
                      for name in PROMPTS]
    return rows, grid_rows


def plot(rows, samples, path):
    from toyworld import report
    se = lambda p, n: (p * (1 - p) / n) ** 0.5
    stat = lambda r: {"editability": (r["editability"], se(r["editability"], 2 * samples)),
                      "fidelity_edits": (r["fidelity_edits"], se(r["fidelity_edits"], 2 * samples))}
    agg = {"perfusion": {json.dumps([float(t[1:]), 1.0]): stat(r) for t, r in rows.items() if t != "base"},
           "base": {"null": stat(rows["base"])}}
    return report.plot(agg, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="toyworld-demo")
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--samples", type=int, default=16, help="samples per prompt and beta")
    parser.add_argument("--keep", action="store_true", help="keep the temporary ComfyUI base folder")
    args = parser.parse_args(argv)
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui or not os.path.exists(os.path.join(comfyui, "main.py")):
        sys.exit("set COMFYUI_PATH to a ComfyUI folder")
    if not os.path.exists(os.path.join(HERE, "model", "toyworld-v1.safetensors")):
        sys.exit("bench/toyworld/model/toyworld-v1.safetensors is missing: run `python -m toyworld.pretrain` in bench/")
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    start = time.time()
    base = scratch_base()
    print(f"ComfyUI {comfyui}, base folder {base}", flush=True)
    server = Server(base, comfyui)
    try:
        server.wait_ready()
        print(f"  server ready: {time.time() - start:.0f} s", flush=True)
        filename = "toyworld_sks.safetensors"
        server.run(train_graph(args.steps, filename[:-len(".safetensors")]), f"train ({args.steps} steps) and gate sweeps")
        server.run(score_graph(filename, args.samples), f"beta sweep, {args.samples} samples per prompt")
    finally:
        server.stop()
    output = os.path.join(base, "output")
    for f in glob.glob(os.path.join(output, "gate_sweep_*.png")):
        shutil.copy(f, out)
    rows, grid_rows = evaluate(output, args.samples)
    from toyworld.pictures import grid
    grid([g[0] for g in grid_rows], [g[1] for g in grid_rows], os.path.join(out, "samples.png"))
    plot(rows, args.samples, os.path.join(out, "fidelity_editability.png"))
    seconds = time.time() - start
    with open(os.path.join(out, "demo.json"), "w") as f:
        json.dump({"rows": rows, "steps": args.steps, "samples": args.samples, "seconds": seconds}, f, indent=1)
    print(f"{'setting':<8} {'fidelity':>9} {'fid. edits':>10} {'editability':>11}")
    for tag, r in rows.items():
        print(f"{tag:<8} {r['fidelity_alone']:9.2f} {r['fidelity_edits']:10.2f} {r['editability']:11.2f}")
    print(f"wrote {out} in {seconds / 60:.1f} min: gate_sweep_*.png, samples.png, fidelity_editability.png")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
