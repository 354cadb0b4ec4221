"""The benchmark's report: markdown tables and the fidelity / editability plot (PIL, no matplotlib)."""

from __future__ import annotations

import json
import os
import sys

import numpy
from PIL import Image, ImageDraw

LABELS = {"perfusion": "Perfusion", "embedding": "Embedding only (TI)", "lora4": "LoRA rank 4", "lora8": "LoRA rank 8",
          "base": "Base model, superclass word"}
COLOURS = {"perfusion": (200, 40, 40), "embedding": (230, 150, 20), "lora4": (40, 90, 200), "lora8": (20, 150, 160),
           "base": (60, 60, 60)}
DEFAULT_SETTING = {"perfusion": [0.7, 1.0], "embedding": [0.7, 0.0], "lora4": 1.0, "lora8": 1.0}
EDITS = ("background", "small", "second", "left")
METRICS = ("fidelity_alone", "fidelity_edits", "editability", "leakage", "fidelity_plain")


def _same(a, b):
    return json.dumps(a) == json.dumps(b)


def aggregate(results):
    """{method: {setting (json): {metric: (mean, se)}}} plus per-edit accuracies, over runs."""
    samples = results["config"]["samples"]
    table = {}
    for run in results["runs"]:
        for s in run["settings"]:
            cell = table.setdefault(run["method"], {}).setdefault(json.dumps(s["setting"]), [])
            cell.append(s)
    out = {}
    for method, settings in table.items():
        for key, rows in settings.items():
            out.setdefault(method, {})[key] = _mean_se(rows, samples)
    out["base"] = {"null": _mean_se(list(results["baseline"].values()), samples)}
    return out


def _mean_se(rows, samples):
    stats = {}
    values = {m: [r[m] for r in rows] for m in METRICS}
    for e in EDITS:
        values[f"edit_{e}"] = [r["per_prompt"][e]["edit"] for r in rows]
    for m, v in values.items():
        v = numpy.asarray(v, dtype=float)
        if len(v) > 1:
            se = float(v.std(ddof=1) / len(v) ** 0.5)
        else:                        # one run: the sampling error of a proportion / a mean probability
            p = float(v[0])
            n = samples * (4 if m in ("editability", "fidelity_edits", "leakage") else 1)
            se = (p * (1 - p) / n) ** 0.5
        stats[m] = (float(v.mean()), se)
    stats["runs"] = len(rows)
    return stats


def _fmt(cell):
    mean, se = cell
    return f"{mean:.2f} ± {se:.2f}"


def plot(agg, path, x="editability", y="fidelity_edits"):
    W, H, L, R, T, B = 760, 560, 70, 200, 30, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    px = lambda v: L + v * (W - L - R)
    py = lambda v: H - B - v * (H - T - B)
    for k in range(11):
        v = k / 10
        d.line([(px(v), py(0)), (px(v), py(1))], fill=(232, 232, 232))
        d.line([(px(0), py(v)), (px(1), py(v))], fill=(232, 232, 232))
        d.text((px(v) - 8, py(0) + 6), f"{v:.1f}", fill="black")
        d.text((px(0) - 30, py(v) - 6), f"{v:.1f}", fill="black")
    d.rectangle([px(0), py(1), px(1), py(0)], outline="black")
    d.text((px(0.35), H - 25), "editability (evaluator accuracy on the edited attribute)", fill="black")
    d.text((8, 8), "fidelity in the edited prompts (P(concept)); bars: ± 1 s.e.", fill="black")
    legend_y = T + 10
    for method in ("perfusion", "embedding", "lora4", "lora8", "base"):
        if method not in agg:
            continue
        colour = COLOURS[method]
        points = []
        for key, stats in agg[method].items():
            points.append((stats[x][0], stats[y][0], stats[x][1], stats[y][1], json.loads(key)))
        if method == "perfusion":
            points.sort(key=lambda p: (p[4][1], p[4][0]))
            line = [p for p in points if p[4][1] == 1.0]
        else:
            points.sort(key=lambda p: (p[4] if isinstance(p[4], float) else 0))
            line = points
        if len(line) > 1:
            d.line([(px(p[0]), py(p[1])) for p in line], fill=colour, width=2)
        for p in points:
            cx, cy = px(p[0]), py(p[1])
            d.line([(px(p[0] - p[2]), cy), (px(p[0] + p[2]), cy)], fill=colour)
            d.line([(cx, py(p[1] - p[3])), (cx, py(p[1] + p[3]))], fill=colour)
            d.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=colour)
            tag = (f"b{p[4][0]:g}" + ("" if p[4][1] == 1.0 else f" s{p[4][1]:g}")) if method == "perfusion" else \
                (f"s{p[4]:g}" if isinstance(p[4], float) else "")
            if tag:
                d.text((cx + 5, cy - 12), tag, fill=colour)
        d.rectangle([W - R + 15, legend_y, W - R + 27, legend_y + 10], fill=colour)
        d.text((W - R + 32, legend_y - 1), LABELS[method], fill="black")
        legend_y += 18
    d.text((W - R + 15, legend_y + 8), "b: Perfusion's beta\ns: strength", fill="black")
    img.save(path)
    return path


def write(results, out):
    agg = aggregate(results)
    cfg = results["config"]
    runs = {}
    for run in results["runs"]:
        runs.setdefault(run["method"], []).append(run)
    lines = ["# Toy-world benchmark", "",
             f"Written by `bench/toyworld/benchmark.py`{' --quick' if cfg['quick'] else ''}. Concepts: "
             f"{', '.join(cfg['concepts'])}; seeds {cfg['seeds']}; {cfg['samples']} samples per prompt; "
             f"{cfg['steps']} training steps of {cfg['batch']} images for every method; LoRA learning rate "
             f"{cfg['lora_rate']:g}; sampler {cfg['sampler']}; torch {cfg['torch']}. Errors: ± 1 standard error "
             + ("over runs." if len(cfg["concepts"]) * len(cfg["seeds"]) > 1 else "over samples (one run)."), "",
             "## Methods at their default settings", "",
             "Perfusion: beta 0.7, tau 0.15, strength 1. Embedding only: strength 0. LoRA: strength 1. "
             "Prompts start \"a photo of a\" (the trainers' template). "
             "Fidelity: the evaluator's P(target concept) on the concept alone and on the four edits; "
             "editability: its accuracy on each edit's attribute; leakage: share of backgrounds that are a "
             "reference background on prompts that name none; fidelity, no prefix: the concept alone as \"a <word>\".", "",
             "| method | fidelity (alone) | fidelity (edits) | editability | background | small | second object | left | leakage | fidelity, no prefix | file | train time | peak memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method in ("perfusion", "embedding", "lora4", "lora8", "base"):
        if method not in agg:
            continue
        key = "null" if method == "base" else json.dumps(DEFAULT_SETTING[method])
        stats = agg[method].get(key)
        if stats is None:
            continue
        if method == "base":
            extra = ["-", "-", "-"]
        else:
            r = runs[method]
            extra = [f"{numpy.mean([x['file_bytes'] for x in r]) / 1024:.0f} KiB",
                     f"{numpy.mean([x['seconds'] for x in r]):.0f} s",
                     f"{numpy.mean([x['peak_bytes'] for x in r]) / 2**20:.0f} MiB"]
        lines.append(f"| {LABELS[method]} | " + " | ".join(_fmt(stats[m]) for m in ("fidelity_alone", "fidelity_edits", "editability"))
                     + " | " + " | ".join(_fmt(stats[f"edit_{e}"]) for e in EDITS) + f" | {_fmt(stats['leakage'])} | "
                     + f"{_fmt(stats['fidelity_plain'])} | "
                     + " | ".join(extra) + " |")
    lines += ["", "## Sweeps", "", "| method | setting | fidelity (alone) | fidelity (edits) | editability | leakage | fidelity, no prefix |",
              "|---|---|---|---|---|---|---|"]
    for method in ("perfusion", "lora4", "lora8"):
        for key, stats in sorted(agg.get(method, {}).items()):
            setting = json.loads(key)
            label = f"beta {setting[0]:g}, strength {setting[1]:g}" if method == "perfusion" else f"strength {setting:g}"
            lines.append(f"| {LABELS[method]} | {label} | " + " | ".join(_fmt(stats[m]) for m in METRICS) + " |")
    if results.get("pairs"):
        lines += ["", "## Two concepts in one prompt", "",
                  "striped-circle (the large object) and split-square (the small one): Perfusion with two loaders, "
                  "LoRA rank 8 with two LoRAs at strength 1; ± 1 standard error over seeds.", "",
                  "| method | fidelity, first | fidelity, second | second object drawn | background edit: fidelity first / second | background accuracy |",
                  "|---|---|---|---|---|---|"]
        for method in ("perfusion", "lora8"):
            rows = [r for r in results["pairs"] if r["method"] == method]
            if not rows:
                continue
            def m(k, f):
                v = numpy.asarray([r[k][f] for r in rows], dtype=float)
                se = v.std(ddof=1) / len(v) ** 0.5 if len(v) > 1 else 0.0
                return f"{v.mean():.2f} ± {se:.2f}"
            lines.append(f"| {LABELS[method]} | {m('pair', 'fidelity_main')} | {m('pair', 'fidelity_second')} | "
                         f"{m('pair', 'second_present')} | {m('pair_background', 'fidelity_main')} / "
                         f"{m('pair_background', 'fidelity_second')} | {m('pair_background', 'edit')} |")
    if results.get("lora_tuning"):
        lines += ["", "## LoRA learning rate (tuned on dotted-square, rank 8, strength 1)", "",
                  "| lr | fidelity (alone) | editability |", "|---|---|---|"]
        for rate, s in results["lora_tuning"].items():
            lines.append(f"| {float(rate):g} | {s['fidelity_alone']:.2f} | {s['editability']:.2f} |")
    plot(agg, os.path.join(out, "fidelity_editability.png"))
    lines += ["", "![fidelity against editability](fidelity_editability.png)", ""]
    for name in cfg["concepts"]:
        lines.append(f"![samples of {name}](samples_{name}.png)")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return agg


# Another CPU rounds the same base-model units differently in the 7th digit (measured: 2e-7).
BASELINE_TOLERANCE = 1e-4
# The settings two runs must share for their units to be one benchmark (seeds aside).
SAME_CONFIG = ("steps", "batch", "samples", "lora_rate", "concepts", "sampler", "tau", "torch", "quick", "jobs")


def merge(results, other):
    """``results`` with ``other``'s seeds added: two runs of the same benchmark over disjoint seeds (for
    example ``--seeds 0,1`` on one day and ``--seeds 2`` on another) are the run over all of them, since
    every unit is deterministic for its seed. Refuses runs whose settings differ, whose seeds overlap, or
    whose base-model scores (the same units in both) disagree beyond float rounding: different code or model."""
    a, b = results["config"], other["config"]
    differ = [k for k in SAME_CONFIG if a.get(k) != b.get(k)]
    if differ:
        raise ValueError("merge: the runs' settings differ in " + ", ".join(f"{k} ({a.get(k)!r} vs {b.get(k)!r})"
                                                                      for k in differ))
    if set(a["seeds"]) & set(b["seeds"]):
        raise ValueError(f"merge: both runs have seeds {sorted(set(a['seeds']) & set(b['seeds']))}; expected disjoint seeds")
    for name, base in results["baseline"].items():
        again = other["baseline"].get(name)
        if again is not None and any(abs(base[k] - again[k]) > BASELINE_TOLERANCE for k in METRICS):
            raise ValueError(f"merge: the base model scores {name} differently in the two runs "
                             f"({base['fidelity_alone']!r} vs {again['fidelity_alone']!r}): not the same code "
                             "or model, so their units are not one benchmark")
    merged = json.loads(json.dumps(results))
    merged["config"]["seeds"] = sorted(a["seeds"] + b["seeds"])
    merged["baseline"] = {**other["baseline"], **results["baseline"]}
    key = lambda r: (a["concepts"].index(r["concept"]), r["seed"])
    merged["runs"] = sorted(results["runs"] + other["runs"], key=key)       # stable: method order kept
    if results.get("pairs") or other.get("pairs"):
        merged["pairs"] = sorted(results.get("pairs", []) + other.get("pairs", []), key=lambda r: r["seed"])
    return merged


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description="Rewrite a benchmark folder's report.md and plot from its "
                                                 "results.json, optionally adding another run's seeds first.")
    parser.add_argument("folder", nargs="?", default=os.path.join(os.path.dirname(__file__), "..", "..", "docs", "toyworld"))
    parser.add_argument("--merge", default="", metavar="FOLDER",
                        help="a run of the same benchmark over other seeds (its results.json) to add to FOLDER's")
    args = parser.parse_args(argv)
    for folder in filter(None, (args.folder, args.merge)):
        if not os.path.exists(os.path.join(folder, "results.json")):
            sys.exit(f"{folder}: no results.json there; expected a folder the benchmark wrote (its --out)")
    results = json.load(open(os.path.join(args.folder, "results.json")))
    if args.merge:
        try:
            results = merge(results, json.load(open(os.path.join(args.merge, "results.json"))))
        except ValueError as e:
            sys.exit(str(e))
        with open(os.path.join(args.folder, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    write(results, args.folder)
    print(f"wrote {args.folder}/report.md (seeds {results['config']['seeds']})")


if __name__ == "__main__":
    main()
