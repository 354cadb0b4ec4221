"""How the caption corpus behind C, and the token positions it counts, change the Perfusion gate.

The gate's metric is s(e) = i*^T G e / i*^T G i*, G = C^-1 (spec section 2), and the edit adds
sigmoid((s - beta) / tau) * o* to EVERY position of the encoded prompt, padding included. A good C
keeps s of unrelated tokens small (the gate stays shut) and keeps s of the concept near 1.

For CLIP-L-shaped text encoders with random weights (width 768, 12 heads, --layers layers, seeded;
built in ComfyUI's own classes, comfy.sd1_clip.SD1ClipModel with the real SD1 tokenizer, filled by
tests/tiny_models.init_random_ with trained-like LayerNorm offsets), this script estimates C with the
pack's own nodes.covariance_cache.compute_covariance (Ledoit-Wolf shrunk, core/covariance.py) from

    (a) the old corpus (commit 085a2f1's data/captions.txt) and (b) the new data/captions.txt,
        the same number of prompts sampled from each,
    (i) over real positions only (BOS .. first EOS of each chunk) and (ii) over all 77 positions,

plus G = I (no covariance) as a reference, inverts it with core.covariance.invert, and measures on
the held-out prompts (bench/data/heldout_prompts.txt, encoded as ComfyUI encodes them: weights,
several chunks), for concepts i* = the mean encoding of a superclass word over the trainer's
templates (core.training.TEMPLATES; training's EMA of i* tends to that mean):

    unrelated tokens (every token that is not the concept word), at real and at padding positions:
        E[s^2], the fraction with gate > 0.5 (s > beta) for inference beta=0.7, tau=0.15 and training
        beta=0.75, tau=0.1, and the mean gate value at the inference setting (its leak);
    the concept itself: s at the word in each training template (1 on average by construction of
        i*; the spread shows how sharp the metric is) and in held-out prompts that contain the word.

Results are averaged over words and seeds; per-seed rows follow. Each corpus is encoded once per
seed (the "real" and "all" estimates share its encodings through a cache around the CLIP).

    COMFYUI_PATH=/path/to/ComfyUI python bench/gate_selectivity.py [--prompts 2000] [--seeds 0 1]
        [--layers 4] [--old git:085a2f1:data/captions.txt] [--new data/captions.txt]
        [--heldout bench/data/heldout_prompts.txt] [--words dog cat ...] [--threads N]
        [--out bench/results/gate_selectivity.md]

About 5 minutes per seed on a 2-core CPU with the defaults (4 layers, 2000 prompts per corpus).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORDS = ["dog", "cat", "bear", "car", "woman", "man", "house", "flower", "bird", "chair"]
SETTINGS = {"inference": (0.7, 0.15), "training": (0.75, 0.1)}


def bootstrap_comfy():
    """ComfyUI from $COMFYUI_PATH, CPU, no argument parsing (as tests/host.py does, without pytest)."""
    path = os.environ.get("COMFYUI_PATH")
    if not path or not os.path.isfile(os.path.join(path, "comfy", "model_patcher.py")):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    if sys.path[0] != path:
        sys.path.insert(0, path)          # ComfyUI's top-level `nodes` must win over this pack's `nodes/`
    sys.path.insert(1, os.path.join(ROOT, "tests"))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args
    args.cpu = True
    import comfy.model_management  # noqa: F401


def read_corpus(spec):
    """A caption file, or 'git:<commit>:<path>' for a version in this repository's history."""
    if spec.startswith("git:"):
        _, commit, path = spec.split(":", 2)
        try:
            text = subprocess.run(["git", "-C", ROOT, "show", f"{commit}:{path}"], check=True,
                                  capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"cannot read {spec} from git ({e}); pass the old corpus as a file with --old")
    else:
        with open(spec, encoding="utf-8") as f:
            text = f.read()
    return [line.strip() for line in text.splitlines() if line.strip()]


def clip_l(layers, seed):
    """An SD1 CLIP (CLIP-L shape: 768 wide, 12 heads, 3072 MLP; ``layers`` deep) with random weights."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base
    from tiny_models import init_random_
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target, model_options={"clip_l_model_config": {"num_hidden_layers": layers}})
    init_random_(clip.cond_stage_model, seed)
    return clip


class EncodingCache:
    """A CLIP whose encode_from_tokens remembers its results: the "real" and "all" estimates of one
    corpus ask for the same batches, and get the same numbers without a second encoder pass."""

    def __init__(self, clip):
        self._clip = clip
        self._cache = {}

    def __getattr__(self, name):
        return getattr(self._clip, name)

    def encode_from_tokens(self, tokens, return_pooled=False, **kwargs):
        key = (return_pooled, tuple(sorted(kwargs.items())),
               tuple((k, tuple(tuple((t[0], t[1]) for t in section) for section in v))
                     for k, v in sorted(tokens.items())))
        if key not in self._cache:
            self._cache[key] = self._clip.encode_from_tokens(tokens, return_pooled=return_pooled, **kwargs)
        return self._cache[key]

    def clear(self):
        self._cache.clear()


def single_token(clip, word):
    ids = clip.tokenizer.clip_l.tokenizer(word)["input_ids"]
    if len(ids) != 3:
        sys.exit(f"superclass word {word!r} is not a single CLIP token")
    return ids[1]


def encode_prompt(clip, text):
    """(encodings [n_chunks * 77, D], token ids, is_real flags) as CLIPTextEncode encodes ``text``."""
    import torch
    tokens = clip.tokenize(text)
    sections = tokens["l"]
    end = clip.tokenizer.clip_l.end_token
    ids, real = [], []
    for section in sections:
        sec = [int(t[0]) for t in section]
        first_eos = next((k for k in range(1, len(sec)) if sec[k] == end), len(sec) - 1)
        ids += sec
        real += [k <= first_eos for k in range(len(sec))]
    with torch.inference_mode():
        enc = clip.encode_from_tokens(tokens)[0].to(torch.float64)
    return enc, torch.tensor(ids), torch.tensor(real)


def concept_inputs(clip, words, templates):
    """i* [W, D] (mean over templates of the word's encoding) and the per-template encodings [W, T, D]."""
    import torch
    istar, per_template = [], []
    for w in words:
        wid = single_token(clip, w)
        rows = []
        for t in templates:
            enc, ids, _ = encode_prompt(clip, t.format(w))
            rows.append(enc[(ids == wid).nonzero()[0, 0]])
        rows = torch.stack(rows)
        per_template.append(rows)
        istar.append(rows.mean(0))
    return torch.stack(istar), torch.stack(per_template)


def gate_metrics(G, istar, word_ids, held, per_template, word_occurrences):
    """Metrics for one G, averaged over the words (a dict of floats)."""
    import torch
    energy = torch.einsum("wd,de,we->w", istar, G, istar)                  # i*^T G i*
    gi = istar @ G                                                          # [W, D]
    out = {}
    for name, mask in (("real", held["real"]), ("pad", ~held["real"])):
        enc, ids = held["enc"][mask], held["ids"][mask]
        s = (enc @ gi.T) / energy                                           # [N, W]
        unrelated = ids[:, None] != word_ids[None, :]
        su = s[unrelated]
        out[f"{name} E[s^2]"] = float(su.square().mean())
        out[f"{name} mean s"] = float(su.mean())
        for setting, (beta, _) in SETTINGS.items():
            out[f"{name} open {setting}"] = float((su > beta).double().mean())
        beta, tau = SETTINGS["inference"]
        out[f"{name} mean gate"] = float(torch.sigmoid((su - beta) / tau).mean())
    bos = held["enc"][0] @ gi.T / energy                                    # BOS: the same in every chunk
    out["bos |s|"] = float(bos.abs().mean())
    own = torch.einsum("wtd,wd->wt", per_template, gi) / energy[:, None]    # [W, T]
    out["own s templates mean"] = float(own.mean())
    out["own s templates min"] = float(own.min())
    occ = [float(v) for k, e in enumerate(word_occurrences) for v in (e @ gi[k]) / energy[k]]
    out["own s held-out mean"] = sum(occ) / len(occ) if occ else float("nan")
    out["own s held-out open"] = sum(v > SETTINGS["inference"][0] for v in occ) / len(occ) if occ else float("nan")
    out["held-out occurrences"] = len(occ)
    return out


def fmt(v, kind="f"):
    if v != v:
        return "n/a"
    if kind == "%":
        return f"{100 * v:.2f}%"
    if kind == "e":
        return f"{v:.3g}"
    return f"{v:.3f}"


def tables(rows, seeds):
    """Markdown tables: the means over seeds, then per seed."""
    configs = list(dict.fromkeys(r["config"] for r in rows))

    def mean(config, key, seed=None):
        vals = [r[key] for r in rows if r["config"] == config and (seed is None or r["seed"] == seed)]
        vals = [v for v in vals if v == v]
        return sum(vals) / len(vals) if vals else float("nan")

    lines = ["### Unrelated tokens (mean over words and seeds)", "",
             "| C from | positions in C | real E[s²] | real gate>0.5 (β .7, τ .15) | real gate>0.5 (β .75, τ .1) "
             "| real mean gate | pad E[s²] | pad gate>0.5 (β .7) | pad gate>0.5 (β .75) | pad mean gate |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in configs:
        corpus, positions = c.split(" / ")
        lines.append(f"| {corpus} | {positions} | {fmt(mean(c, 'real E[s^2]'), 'e')} "
                     f"| {fmt(mean(c, 'real open inference'), '%')} | {fmt(mean(c, 'real open training'), '%')} "
                     f"| {fmt(mean(c, 'real mean gate'), 'e')} | {fmt(mean(c, 'pad E[s^2]'), 'e')} "
                     f"| {fmt(mean(c, 'pad open inference'), '%')} | {fmt(mean(c, 'pad open training'), '%')} "
                     f"| {fmt(mean(c, 'pad mean gate'), 'e')} |")
    lines += ["", "### The concept and C (mean over words and seeds)", "",
              "| C from | positions in C | own s, templates: mean / min | own s, held-out occurrences: mean "
              "| held-out occurrences with gate>0.5 (β .7) | BOS abs(s) | shrinkage ρ used (Ledoit-Wolf) | cond(C) "
              "| cond(sample) | tokens |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in configs:
        corpus, positions = c.split(" / ")
        lines.append(f"| {corpus} | {positions} | {fmt(mean(c, 'own s templates mean'))} / "
                     f"{fmt(mean(c, 'own s templates min'))} | {fmt(mean(c, 'own s held-out mean'))} "
                     f"| {fmt(mean(c, 'own s held-out open'), '%')} | {fmt(mean(c, 'bos |s|'), 'e')} "
                     f"| {fmt(mean(c, 'rho'), 'e')} ({fmt(mean(c, 'rho lw'), 'e')}) | {fmt(mean(c, 'cond'), 'e')} | {fmt(mean(c, 'sample cond'), 'e')} "
                     f"| {fmt(mean(c, 'tokens'), 'e')} |")
    lines += ["", "### Per seed", "",
              "| seed | C from | positions in C | real E[s²] | real gate>0.5 (β .7) | pad E[s²] | pad gate>0.5 (β .7) "
              "| pad gate>0.5 (β .75) | own s held-out |",
              "|---|---|---|---|---|---|---|---|---|"]
    for seed in seeds:
        for c in configs:
            corpus, positions = c.split(" / ")
            lines.append(f"| {seed} | {corpus} | {positions} | {fmt(mean(c, 'real E[s^2]', seed), 'e')} "
                         f"| {fmt(mean(c, 'real open inference', seed), '%')} | {fmt(mean(c, 'pad E[s^2]', seed), 'e')} "
                         f"| {fmt(mean(c, 'pad open inference', seed), '%')} | {fmt(mean(c, 'pad open training', seed), '%')} "
                         f"| {fmt(mean(c, 'own s held-out mean', seed))} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2000, help="prompts sampled from each corpus")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="random text-encoder seeds")
    parser.add_argument("--layers", type=int, default=4, help="transformer layers of the CLIP-L-shaped encoder (real: 12)")
    parser.add_argument("--old", default="git:085a2f1:data/captions.txt", help="old corpus: a file or git:<commit>:<path>")
    parser.add_argument("--new", default=os.path.join(ROOT, "data", "captions.txt"), help="new corpus file")
    parser.add_argument("--heldout", default=os.path.join(HERE, "data", "heldout_prompts.txt"))
    parser.add_argument("--words", nargs="+", default=WORDS, help="superclass words (single CLIP tokens)")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the corpus subsample")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "gate_selectivity.md"))
    args = parser.parse_args()

    started = time.perf_counter()
    bootstrap_comfy()
    import torch
    import comfy.utils
    from pack_loader import load_pack
    if args.threads:
        torch.set_num_threads(args.threads)
    comfy.utils.PROGRESS_BAR_ENABLED = False
    pack = load_pack()
    compute_covariance = pack.nodes.covariance_cache.compute_covariance
    invert = pack.core.covariance.invert
    templates = pack.core.training.TEMPLATES

    corpora = {}
    for name, spec in (("old", args.old), ("new", args.new)):
        lines = read_corpus(spec)
        n = min(args.prompts, len(lines))
        corpora[name] = random.Random(args.sample_seed).sample(lines, n)
    heldout = read_corpus(args.heldout)

    rows, notes = [], []
    for seed in args.seeds:
        t0 = time.perf_counter()
        clip = clip_l(args.layers, seed)
        word_ids = torch.tensor([single_token(clip, w) for w in args.words])
        encs, ids, real = zip(*(encode_prompt(clip, text) for text in heldout))
        held = {"enc": torch.cat(encs), "ids": torch.cat(ids), "real": torch.cat(real)}
        word_occurrences = [held["enc"][held["real"] & (held["ids"] == wid)] for wid in word_ids]
        istar, per_template = concept_inputs(clip, args.words, templates)
        print(f"seed {seed}: held-out {len(heldout)} prompts, {int(held['real'].sum())} real and "
              f"{int((~held['real']).sum())} padding positions; concepts {', '.join(args.words)} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        D = istar.shape[1]
        base = {"seed": seed, "config": "none (G = I) / -", "rho": float("nan"), "rho lw": float("nan"), "cond": 1.0,
                "sample cond": float("nan"), "tokens": float("nan")}
        rows.append({**base, **gate_metrics(torch.eye(D, dtype=torch.float64), istar, word_ids, held, per_template,
                                            word_occurrences)})
        for name, captions in corpora.items():
            cached = EncodingCache(clip)
            for positions in ("real", "all"):
                t1 = time.perf_counter()
                est = compute_covariance(cached, captions, progress=None, positions=positions)
                G = invert(est.covariance)
                metrics = gate_metrics(G, istar, word_ids, held, per_template, word_occurrences)
                rows.append({"seed": seed, "config": f"{name} / {positions}", "rho": est.intensity,
                             "rho lw": est.ledoit_wolf,
                             "cond": est.condition, "sample cond": est.sample_condition, "tokens": est.tokens,
                             **metrics})
                print(f"seed {seed}: {name} corpus, {positions} positions: {est.captions} captions, {est.tokens} "
                      f"tokens, shrinkage {est.intensity:.3g} (Ledoit-Wolf {est.ledoit_wolf:.3g}), cond {est.condition:.3g} "
                      f"({time.perf_counter() - t1:.0f} s)", flush=True)
            cached.clear()
        notes.append(f"seed {seed}: {time.perf_counter() - t0:.0f} s")

    chunks = {name: sum(len(cached_tokens["l"]) for cached_tokens in (clip.tokenize(t) for t in caps))
              for name, caps in corpora.items()}
    elapsed = time.perf_counter() - started
    header = ["# Gate selectivity: old vs new caption corpus, real vs all positions", "",
              f"Text encoder: CLIP-L-shaped SD1ClipModel (768 wide, 12 heads, {args.layers} layers, random weights), "
              f"seeds {', '.join(map(str, args.seeds))}. C from {args.prompts} prompts of each corpus "
              f"(old: {args.old}, {chunks['old']} chunks; new: {os.path.relpath(args.new, ROOT)}, {chunks['new']} chunks), "
              f"sample seed {args.sample_seed}; Ledoit-Wolf shrunk (core/covariance.py). Held-out: "
              f"{os.path.relpath(args.heldout, ROOT)}, {len(heldout)} prompts. Concepts: i* = mean encoding of "
              f"{', '.join(args.words)} over the {len(templates)} training templates. gate>0.5 means s > β. "
              f"Run time {elapsed / 60:.1f} min ({'; '.join(notes)}).", "",
              "`python bench/gate_selectivity.py " + " ".join(sys.argv[1:]) + "`", "", ""]
    text = "\n".join(header) + tables(rows, args.seeds) + "\n"
    print("\n" + text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
