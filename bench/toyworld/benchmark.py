"""The toy-world benchmark: Perfusion against ComfyUI's LoRA trainer and textual inversion, on the same
reference images and step budget, through the real nodes and KSampler, scored by the evaluator.

    cd bench && COMFYUI_PATH=... python -m toyworld.benchmark --jobs 2   # 3 concepts x 3 seeds, two-concept prompts
    cd bench && COMFYUI_PATH=... python -m toyworld.benchmark --quick    # 1 concept, 1 seed

``--jobs N`` runs the independent units (the base model per concept, each concept x seed, each seed's
two-concept prompts) in N worker processes of one torch thread each and merges their parts; the numbers
are deterministic for a seed and a --jobs setting (the thread count changes float rounding).
Resumable: each finished unit is kept in ``~/.cache/comfyui-perfusion-toyworld/benchmark-units/<key>``
(the key: the model and evaluator files and every setting), so an interrupted command, run again,
runs only the units it had not finished.

Methods (all 5 reference images of a concept, no masks, no flips, ``STEPS`` optimizer steps of
``BATCH`` images):
- perfusion:  "Train Perfusion Concept" with the paper's learning rates and gate (beta 0.75, tau 0.1 in
              training); sampled through "Load Rank-1 Concept" and "Gate Strength".
- embedding:  textual inversion on the same code path (the trainer with the K/V edit off,
              ``train_values=False``), sampled at Gate Strength's strength 0.
- lora4/8:    core TrainLoraNode (rank 4 / 8, every UNet weight, its own MSE-on-x0 loss) with the caption
              "a photo of a <trigger> <superclass>", its learning rate tuned on the held-out tuning concept
              (``--tune-lora``); sampled through LoraModelLoader.
Prompts (held out from training), each after "a photo of": the concept alone and four edits: another
background, small, next to a second object, on the left (beside a second object: the world's captions name
positions only so); and the concept alone without the prefix ("plain", fidelity only). Perfusion and the
embedding take the trigger in place of the shape word ("a photo of a sks on a purple background"), LoRA its
caption's "sks circle"; the base model with the superclass
word gives the floor of fidelity and the ceiling of editability.

Metrics: fidelity = the evaluator's probability of the target concept (mean over samples); editability =
the evaluator's accuracy on each edit's attribute; leakage = the share of samples whose background is one
of the references' on prompts that name no background (the base model's share is the chance level); file
size, training time, peak memory above the loaded models. Errors are standard errors over runs
(concepts x seeds), or over samples when there is one run.

Writes ``results/toyworld/``: report.md, results.json, fidelity_editability.png and sample grids.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy

from . import graph
from . import world

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train_vs_lora import PeakRSS  # noqa: E402  (bench/'s peak-memory sampler)

STEPS, BATCH = 200, 8
TRIGGERS = {"striped-circle": "sks", "split-square": "ohwx", "bullseye-circle": "bnha", "dotted-square": "klm"}
PERFUSION_SWEEP = [(beta, 1.0) for beta in (0.0, 0.2, 0.4, 0.7, 1.0, 2.0)] + [(0.4, 0.5)]
LORA_STRENGTHS = (0.25, 0.5, 0.75, 1.0)
QUICK_CONCEPT = "split-square"          # the concept this VAE renders most faithfully (docs/toyworld.md)
QUICK_PERFUSION_SWEEP = [(0.0, 1.0), (0.4, 1.0), (0.7, 1.0), (2.0, 1.0)]
QUICK_LORA_STRENGTHS = (0.5, 1.0)
LORA_RATES = (3e-4, 1e-3, 3e-3, 1e-2)   # 1e-4 was the worst of the first grid, 3e-3 (its top) the best
DEFAULT_LORA_RATE = 1e-3
TAU = 0.15
EDIT_BACKGROUND = {"striped-circle": "purple", "split-square": "orange", "bullseye-circle": "yellow", "dotted-square": "red"}
SECOND = {"striped-circle": ("blue", "square"), "split-square": ("red", "circle"),
          "bullseye-circle": ("purple", "triangle"), "dotted-square": ("yellow", "triangle")}
RESULTS = os.path.join(graph.ROOT, "docs", "toyworld")            # the full run's report is committed
QUICK_RESULTS = os.path.join(graph.ROOT, "bench", "results", "toyworld-quick")


PREFIX = world.PREFIXES[0]     # "a photo of": the trainers' first template's prefix, and a world caption prefix


def prompt_set(concept: world.Concept, word: str):
    """(name, prompt, {head: expected}) for the concept alone, its four edits, and the concept alone without
    the prefix ("plain": fidelity only). The text encoder is causal, so a token's encoding depends on the
    words before it: after "a photo of a" the trigger encodes as in training, after a bare "a" it does not
    (``python -m toyworld.gate_tokens``), and "plain" measures what that costs each method."""
    bg = EDIT_BACKGROUND[concept.name]
    colour, shape = SECOND[concept.name]
    return [("alone", f"{PREFIX} a {word}", {}),
            ("background", f"{PREFIX} a {word} on a {bg} background", {"background": world.COLOUR_NAMES.index(bg)}),
            ("small", f"{PREFIX} a small {word}", {"size": world.SIZES.index("small")}),
            ("second", f"{PREFIX} a {word} and a small {colour} {shape}",
             {"second": 1, "second_colour": world.COLOUR_NAMES.index(colour)}),
            # the world's captions name a position only beside a second object (world.random_scene)
            ("left", f"{PREFIX} a {word} on the left and a small {colour} {shape}",
             {"position": world.POSITIONS.index("left")}),
            ("plain", f"a {word}", {})]


def references(concept):
    import torch
    return torch.from_numpy(world.references(concept))


# --- training -----------------------------------------------------------------------------------------------

class Trained:
    """One trained concept: ``variant(setting)`` gives the (model, clip) to sample with."""

    def __init__(self, method, concept, seed, seconds, peak, file_bytes, variant, word, settings, losses=None,
                 lora=None):
        self.method, self.concept, self.seed, self.lora = method, concept, seed, lora
        self.seconds, self.peak, self.file_bytes = seconds, peak, file_bytes
        self.variant, self.word, self.settings, self.losses = variant, word, settings, losses


def train_perfusion(pack, base, concept, seed, train_values=True, steps=None):
    import torch
    steps = steps or STEPS
    unet, clip, vae = base
    trigger = TRIGGERS[concept.name]
    name = f"{'perfusion' if train_values else 'embedding'}-{concept.name}-{seed}"
    start = time.perf_counter()
    with PeakRSS() as peak, torch.inference_mode():
        path, _, losses = pack.nodes.train_concept.train_concept(
            unet, clip, vae, references(concept), trigger, concept.superclass, steps=steps, batch_size=BATCH // 2,
            grad_accumulation=2, resolution=64, flip=False, masked_loss=False, seed=seed, filename=name,
            progress=False, train_values=train_values)
    seconds = time.perf_counter() - start
    filename = os.path.basename(path)

    def variant(setting):
        beta, strength = setting
        model, patched_clip = pack.nodes.load_concept.PerfusionLoadConcept().load(unet, clip, filename, 1.0)
        model = pack.nodes.gate_strength.PerfusionGateStrength().apply(
            model, trigger, beta, TAU, strength if train_values else 0.0, "local", 0.0, 1.0)[0]
        return model, patched_clip

    settings = PERFUSION_SWEEP if train_values else [(0.7, 0.0)]
    return Trained("perfusion" if train_values else "embedding", concept, seed, seconds, (peak.peak - peak.base),
                   os.path.getsize(path), variant, trigger, settings, losses)


def train_lora(pack, base, concept, seed, rank, rate, steps=None, work=None):
    import torch
    steps = steps or STEPS
    from safetensors.torch import save_file
    from comfy_extras.nodes_train import LoraModelLoader, TrainLoraNode
    unet, clip, vae = base
    trigger = TRIGGERS[concept.name]
    word = f"{trigger} {concept.superclass}"
    with torch.inference_mode():
        latents = graph.vae_encode(vae, references(concept))
        positive = graph.encode(clip, f"a photo of a {word}")
    start = time.perf_counter()
    with PeakRSS() as peak, torch.inference_mode():
        _, lora, loss, _ = TrainLoraNode().train(unet, latents, positive, BATCH // 2, steps, 2, rate, rank,
                                                 "AdamW", "MSE", seed, "fp32", "fp32", "LoRA", False, "[None]")
    seconds = time.perf_counter() - start
    path = os.path.join(work or tempfile.mkdtemp(), f"lora{rank}-{concept.name}-{seed}.safetensors")
    save_file({k: v.detach().float().contiguous() for k, v in lora.items()}, path)

    def variant(strength):
        with torch.inference_mode():
            return LoraModelLoader().load_lora_model(unet, lora, strength)[0], clip

    return Trained(f"lora{rank}", concept, seed, seconds, (peak.peak - peak.base), os.path.getsize(path), variant, word,
                   list(LORA_STRENGTHS), loss.get("loss"), lora=lora)


# --- scoring ------------------------------------------------------------------------------------------------

def score(net, model, clip, vae, concept, word, samples, seed, keep_grid=None):
    """Per prompt: fidelity (mean P(target)), edit accuracy, reference-background share."""
    from . import evaluator
    target = world.ALL_CONCEPTS.index(concept) + 1
    refs = [world.COLOUR_NAMES.index(b) for b in concept.backgrounds]
    out = {}
    for k, (name, prompt, expected) in enumerate(prompt_set(concept, word)):
        images = graph.sample(model, clip, vae, prompt, samples, seed=seed * 7919 + k)
        read = evaluator.read(net, images)
        fidelity = read["concept"][:, target]
        row = {"prompt": prompt, "fidelity": float(fidelity.mean()), "fidelity_se": float(fidelity.std() / samples ** 0.5)}
        if expected:
            ok = numpy.ones(samples, dtype=bool)
            for head, cls in expected.items():
                ok &= (read[head].argmax(1) == cls).numpy()
            row["edit"] = float(ok.mean())
        if name not in ("background", "plain"):
            bg = read["background"].argmax(1).numpy()
            row["leak"] = float(numpy.isin(bg, refs).mean())
        out[name] = row
        if keep_grid is not None:
            keep_grid.append((images, f"{prompt}  (fidelity {row['fidelity']:.2f})"))
    return summarise(out)


def summarise(per_prompt):
    edits = [r["edit"] for r in per_prompt.values() if "edit" in r]
    leaks = [r["leak"] for r in per_prompt.values() if "leak" in r]
    return {"fidelity_alone": per_prompt["alone"]["fidelity"], "fidelity_plain": per_prompt["plain"]["fidelity"],
            "fidelity_edits": float(numpy.mean([r["fidelity"] for n, r in per_prompt.items() if n not in ("alone", "plain")])),
            "editability": float(numpy.mean(edits)), "leakage": float(numpy.mean(leaks)),
            "per_prompt": per_prompt}


# --- the run -------------------------------------------------------------------------------------------------

class Progress:
    def __init__(self, total):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def __call__(self, what, units=1):
        self.done += units
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(self.done, 1e-9) * (self.total - self.done)
        print(f"[{self.done:>4}/{self.total}] {elapsed / 60:5.1f} min, ~{eta / 60:4.1f} min left  {what}", flush=True)


def tune_lora_rate(pack, base, net, samples, work, rate):
    """One point of LoRA's learning-rate tuning: rank 8 at ``rate`` on the tuning concept (never one of
    the scored ones), scored at strength 1."""
    concept = world.TUNING_CONCEPT
    trained = train_lora(pack, base, concept, 0, 8, rate, work=work)
    model, patched = trained.variant(1.0)
    s = score(net, model, patched, base[2], concept, trained.word, samples, seed=99)
    return {k: v for k, v in s.items() if k != "per_prompt"}


def best_lora_rate(tuning: dict) -> float:
    """The rate with the best fidelity x editability."""
    return float(max(tuning, key=lambda r: tuning[r]["fidelity_alone"] * tuning[r]["editability"]))


def run_units(concepts, seeds, pairs):
    """The benchmark's independent units, in report order: ("base", concept, 0) scores the base model,
    ("run", concept, seed) trains and sweeps every method, ("pair", "", seed) the two-concept prompts."""
    out = []
    for concept in concepts:
        out.append(("base", concept.name, 0))
        out += [("run", concept.name, seed) for seed in seeds]
    if pairs:
        out += [("pair", "", seed) for seed in seeds]
    return out


def unit_weight(unit):
    """Rough cost in scoring passes (one training ~ two), for the ETA."""
    kind = unit[0]
    if kind == "base":
        return 1
    if kind == "tune":
        return 3
    if kind == "pair":
        return 12
    return 2 * len(METHODS) + len(PERFUSION_SWEEP) + 1 + 2 * len(LORA_STRENGTHS)


METHODS = ("perfusion", "embedding", "lora4", "lora8")


def run_unit(unit, ctx, progress):
    """One unit: {"baseline": {...}} | {"runs": [...]} | {"pairs": [...]}, and its sample-grid rows."""
    kind, name, seed = unit
    pack, base, net, samples, rate, work = (ctx[k] for k in ("pack", "base", "net", "samples", "rate", "work"))
    unet, clip, vae = base
    if kind == "tune":
        tuning = tune_lora_rate(pack, base, net, samples, work, float(name))
        progress(f"LoRA rank 8 lr {name}: fidelity {tuning['fidelity_alone']:.3f}, "
                 f"editability {tuning['editability']:.3f}")
        return {"tuning": {name: tuning}}, []
    if kind == "pair":
        return {"pairs": two_concepts(pack, base, net, samples, [seed], rate, work, progress)}, []
    concept = next(c for c in world.ALL_CONCEPTS if c.name == name)
    rows = []
    if kind == "base":
        baseline = score(net, unet, clip, vae, concept, concept.superclass, samples, 0, rows)
        progress(f"base model, '{concept.superclass}' prompts ({concept.name})")
        return {"baseline": {concept.name: baseline}}, rows[:3]
    grid_rows, runs = [], []
    for method in METHODS:
        if method in ("perfusion", "embedding"):
            trained = train_perfusion(pack, base, concept, seed, train_values=method == "perfusion")
        else:
            trained = train_lora(pack, base, concept, seed, int(method[4:]), rate, work=work)
        progress(f"trained {method} on {concept.name}, seed {seed} ({trained.seconds:.0f} s)", 2)
        run_row = {"method": method, "concept": concept.name, "seed": seed, "seconds": trained.seconds,
                   "peak_bytes": trained.peak, "file_bytes": trained.file_bytes, "settings": []}
        for setting in trained.settings:
            model, patched = trained.variant(setting)
            rows = [] if seed == 0 and setting in ((0.7, 1.0), (0.7, 0.0), 1.0) else None
            s = score(net, model, patched, vae, concept, trained.word, samples, seed, rows)
            if rows:
                grid_rows.extend(rows[:3])
            run_row["settings"].append({"setting": setting, **s})
            progress(f"  {method} {setting}: fidelity {s['fidelity_alone']:.2f}, editability {s['editability']:.2f}")
        runs.append(run_row)
    return {"runs": runs}, grid_rows


def _unit_name(unit):
    return "-".join(str(u) for u in unit if u != "")


def _save_part(part, rows, path):
    arrays = {f"row{k}": (numpy.asarray(images, dtype=numpy.float32).clip(0, 1) * 255).astype(numpy.uint8)
              for k, (images, _) in enumerate(rows)}
    numpy.savez(path + ".npz", **arrays)
    # the .json last and atomically: it marks the unit as finished (a resumed run skips it)
    with open(path + ".json.tmp", "w") as f:
        json.dump({"part": part, "captions": [caption for _, caption in rows]}, f)
    os.replace(path + ".json.tmp", path + ".json")


def _load_part(path):
    saved = json.load(open(path + ".json"))
    arrays = numpy.load(path + ".npz")
    rows = [(arrays[f"row{k}"].astype(numpy.float32) / 255, caption) for k, caption in enumerate(saved["captions"])]
    return saved["part"], rows


def _run_in_processes(units, args, rate, jobs, parts, progress):
    """Each unit in its own process with one torch thread (two such processes on two cores do more work
    than one process with two threads); returns when all are done, or raises with the failed unit's log."""
    import concurrent.futures
    import subprocess
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}      # torch reads these at start
    bench = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def one(unit):
        path = os.path.join(parts, _unit_name(unit))
        cmd = [sys.executable, "-m", "toyworld.benchmark", "--unit", ":".join(map(str, unit)), "--part", path,
               "--samples", str(args.samples or 32), "--lora-rate", repr(rate or DEFAULT_LORA_RATE),
               "--train-steps", str(STEPS)] + (["--quick"] if args.quick else [])
        with open(path + ".log", "w") as log:
            code = subprocess.call(cmd, cwd=bench, env=env, stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            tail = open(path + ".log").read()[-3000:]
            raise RuntimeError(f"benchmark unit {unit} failed (exit {code}); its log {path}.log ends:\n{tail}")
        return unit

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(one, u) for u in sorted(units, key=unit_weight, reverse=True)]
        for future in concurrent.futures.as_completed(futures):
            unit = future.result()
            progress(f"done: {_unit_name(unit)}", unit_weight(unit))


def _context(args, rate, work):
    pack = graph.setup(work)              # makes ComfyUI importable first
    from . import evaluator
    from . import model as toy
    return {"pack": pack, "base": toy.load(), "net": evaluator.load(), "samples": args.samples or 32, "rate": rate,
            "work": work}


def _apply_quick(args):
    global PERFUSION_SWEEP, LORA_STRENGTHS
    if args.quick:
        PERFUSION_SWEEP, LORA_STRENGTHS = QUICK_PERFUSION_SWEEP, QUICK_LORA_STRENGTHS


def run_one_unit(args):
    """``--unit``: one unit into ``--part`` (the worker side of ``--jobs``)."""
    _apply_quick(args)
    kind, name, seed = args.unit.split(":")
    unit = (kind, name, int(seed))
    work = tempfile.mkdtemp(prefix="toyworld-unit-")
    ctx = _context(args, args.lora_rate, work)
    progress = Progress(unit_weight(unit))
    part, rows = run_unit(unit, ctx, progress)
    _save_part(part, rows, args.part)
    shutil.rmtree(work, ignore_errors=True)


def run(args):
    import torch
    work = tempfile.mkdtemp(prefix="toyworld-bench-")
    ctx = _context(args, None, work)
    from .pictures import grid
    out = args.out
    os.makedirs(out, exist_ok=True)
    _apply_quick(args)
    concepts = [c for c in world.CONCEPTS if c.name == QUICK_CONCEPT] if args.quick else list(world.CONCEPTS)
    if args.concepts:
        concepts = [c for c in world.CONCEPTS if c.name in args.concepts.split(",")]
    seeds = [0] if args.quick else [0, 1, 2]
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
    samples = ctx["samples"]
    lr_file = os.path.join(out, "lora_rate.json")
    tuning = None
    if args.tune_lora or not os.path.exists(lr_file):
        if args.quick and not args.tune_lora:
            rate = DEFAULT_LORA_RATE
        else:
            print(f"tuning LoRA's learning rate on {world.TUNING_CONCEPT.name} ...", flush=True)
            units = [("tune", repr(r), 0) for r in LORA_RATES]
            tuning = {}
            for _, part, _ in _run_units(units, ctx, args, None, work, Progress(sum(map(unit_weight, units)))):
                tuning.update(part["tuning"])
            rate = best_lora_rate(tuning)
            with open(lr_file, "w") as f:
                json.dump({"rate": rate, "scores": tuning, "samples": samples}, f, indent=1)
    else:
        saved = json.load(open(lr_file))
        rate, tuning = saved["rate"], saved.get("scores")
    ctx["rate"] = rate
    units = run_units(concepts, seeds, pairs=not (args.quick or args.no_pairs))
    progress = Progress(sum(unit_weight(u) for u in units))
    results = {"config": {"steps": STEPS, "batch": BATCH, "samples": samples, "seeds": seeds, "lora_rate": rate,
                          "concepts": [c.name for c in concepts], "sampler": graph.SAMPLER, "tau": TAU,
                          "torch": torch.__version__, "quick": bool(args.quick), "jobs": args.jobs},
               "baseline": {}, "runs": []}
    done = _run_units(units, ctx, args, rate, work, progress)
    grids = {}
    for unit, part, rows in done:
        results["baseline"].update(part.get("baseline", {}))
        results["runs"] += part.get("runs", [])
        if "pairs" in part:
            results.setdefault("pairs", []).extend(part["pairs"])
        if rows:
            grids.setdefault(unit[1], []).extend(rows)
    for name, rows in grids.items():
        grid([r[0] for r in rows], [r[1] for r in rows], os.path.join(out, f"samples_{name}.png"))
    if tuning:
        results["lora_tuning"] = tuning
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    from . import report
    report.write(results, out)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}/report.md ({(time.perf_counter() - progress.start) / 60:.1f} min)")


def code_files() -> list[str]:
    """The code a unit's numbers depend on: the pack's nodes/ and core/, and bench/toyworld/."""
    import glob
    return sorted(p for folder in ("nodes", "core", os.path.join("bench", "toyworld"))
                  for p in glob.glob(os.path.join(graph.ROOT, folder, "*.py")))


def parts_folder(args, rate, files, versions=()) -> str:
    """Where finished units are kept, so that rerunning the same command resumes: one folder per
    everything a unit's numbers depend on (``files``: the model, the evaluator and the code; ``versions``:
    torch's and ComfyUI's; the settings; the thread mode). A changed trainer never reuses old parts."""
    import hashlib
    key = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            key.update(hashlib.sha256(f.read()).digest())
    key.update(json.dumps({"steps": STEPS, "batch": BATCH, "samples": args.samples or 32, "rate": rate,
                           "quick": bool(args.quick), "one_thread_workers": args.jobs > 1, "tau": TAU,
                           "sampler": graph.SAMPLER, "versions": list(versions)}, sort_keys=True).encode())
    return os.path.join(graph.CACHE, "benchmark-units", key.hexdigest()[:16])


def pending(units, parts):
    """The units without a finished part in ``parts``."""
    return [u for u in units if not os.path.exists(os.path.join(parts, _unit_name(u)) + ".json")]


def _run_units(units, ctx, args, rate, work, progress):
    """[(unit, part, grid rows)] in ``units``' order: in this process, or in ``--jobs`` workers. Each
    finished unit is kept in ``parts_folder``; units already there are not run again."""
    import comfyui_version
    import torch
    from . import evaluator
    from . import model as toy
    parts = parts_folder(args, rate, [toy.BUNDLE, evaluator.WEIGHTS] + code_files(),
                         (torch.__version__, comfyui_version.__version__))
    os.makedirs(parts, exist_ok=True)
    todo = pending(units, parts)
    kept = len(units) - len(todo)
    print(f"{len(todo)} units to run in {args.jobs} process(es), {kept} kept from an earlier run "
          f"(parts and logs in {parts})", flush=True)
    progress.total -= sum(unit_weight(u) for u in units if u not in todo)     # the ETA counts what is left
    if args.jobs <= 1:
        for u in todo:
            _save_part(*run_unit(u, ctx, progress), os.path.join(parts, _unit_name(u)))
    elif todo:
        # the toy CLIP's covariance once, here, before the workers need it
        ctx["pack"].nodes.covariance_cache.covariance_for(ctx["base"][1], show_progress=False)
        _run_in_processes(todo, args, rate, args.jobs, parts, progress)
    return [(u, *_load_part(os.path.join(parts, _unit_name(u)))) for u in units]


def two_concepts(pack, base, net, samples, seeds, rate, work, progress):
    """striped-circle (main) and split-square (second, small) in one prompt: Perfusion with two loaders,
    LoRA (rank 8) with two LoRAs; fidelity of each and the background edit."""
    import torch
    from comfy_extras.nodes_train import LoraModelLoader
    from . import evaluator
    unet, clip, vae = base
    a, b = world.CONCEPTS[0], world.CONCEPTS[1]
    ia, ib = world.ALL_CONCEPTS.index(a) + 1, world.ALL_CONCEPTS.index(b) + 1
    out = []
    for seed in seeds:
        for method in ("perfusion", "lora8"):
            if method == "perfusion":
                ta, tb = (train_perfusion(pack, base, c, seed) for c in (a, b))
                model, patched = unet, clip
                for t in (ta, tb):
                    model, patched = pack.nodes.load_concept.PerfusionLoadConcept().load(
                        model, patched, f"perfusion-{t.concept.name}-{seed}.safetensors", 1.0)
                model = pack.nodes.gate_strength.PerfusionGateStrength().apply(model, "", 0.7, TAU, 1.0, "local", 0.0, 1.0)[0]
                words = (ta.word, tb.word)
            else:
                ta, tb = (train_lora(pack, base, c, seed, 8, rate, work=work) for c in (a, b))
                with torch.inference_mode():
                    model = LoraModelLoader().load_lora_model(unet, ta.lora, 1.0)[0]
                    model = LoraModelLoader().load_lora_model(model, tb.lora, 1.0)[0]
                patched = clip
                words = (ta.word, tb.word)
            row = {"method": method, "seed": seed}
            for name, prompt in (("pair", f"{PREFIX} a {words[0]} and a small {words[1]}"),
                                 ("pair_background", f"{PREFIX} a {words[0]} on a yellow background and a small {words[1]}")):
                images = graph.sample(model, patched, vae, prompt, samples, seed=seed * 31 + len(name))
                read = evaluator.read(net, images)
                row[name] = {"prompt": prompt, "fidelity_main": float(read["concept"][:, ia].mean()),
                             "fidelity_second": float(read["second_concept"][:, ib].mean()),
                             "second_present": float((read["second"].argmax(1) == 1).float().mean())}
                if name == "pair_background":
                    row[name]["edit"] = float((read["background"].argmax(1) == world.COLOUR_NAMES.index("yellow")).float().mean())
            out.append(row)
            progress(f"two concepts, {method}, seed {seed}: {row['pair']['fidelity_main']:.2f} / "
                     f"{row['pair']['fidelity_second']:.2f}", 6)
    return out


def main(argv=None):
    global STEPS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one concept, one seed, a shorter sweep")
    parser.add_argument("--samples", type=int, default=0, help="samples per prompt (default 32)")
    parser.add_argument("--tune-lora", action="store_true", help="tune LoRA's learning rate again")
    parser.add_argument("--concepts", default="", help="a subset, comma-separated (e.g. striped-circle)")
    parser.add_argument("--seeds", default="", help="a subset, comma-separated (e.g. 0)")
    parser.add_argument("--no-pairs", action="store_true", help="skip the two-concept prompts")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes, one torch thread each (2 on a 2-core machine)")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--unit", default="", help=argparse.SUPPRESS)          # the worker side of --jobs
    parser.add_argument("--part", default="", help=argparse.SUPPRESS)
    parser.add_argument("--lora-rate", type=float, default=DEFAULT_LORA_RATE, help=argparse.SUPPRESS)
    parser.add_argument("--train-steps", type=int, default=STEPS, help=argparse.SUPPRESS)   # smoke tests only
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs: expected 1 or more worker processes, got {args.jobs}")
    STEPS = args.train_steps
    if args.unit:
        return run_one_unit(args)
    if args.quick and args.out == RESULTS:
        args.out = QUICK_RESULTS
    run(args)


if __name__ == "__main__":
    sys.exit(main())
