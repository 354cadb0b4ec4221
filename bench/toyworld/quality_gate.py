"""The quality gate: does the base model draw what its prompt says? Samples through KSampler from prompts
with known attributes and reads them back with the evaluator. Personalization figures count only if, on
one-object prompts naming every attribute, colour and background accuracy are >= 0.9 and size >= 0.8.
Shape, and composition (a second object, positions, colours bound to the right object), are reported too.

The same numbers are the evaluator's accuracy on generated samples: a sample is counted right only when
the model drew the attribute *and* the evaluator read it, so each figure is a lower bound on both.

    cd bench && COMFYUI_PATH=... python -m toyworld.quality_gate [--samples 8] [--out results/toyworld]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy

from . import graph
from . import world

GATE = {"colour": 0.9, "background": 0.9, "size": 0.8}


def prompts(seed=0):
    """(set, prompt, {head: expected class}) for the gate's prompt sets.

    "named": one object, every attribute named (the gate). "two objects": a second, small object named.
    "positioned": a large object at a named position beside a small second one, the only way the world's
    captions name a position (world.random_scene). "outside": a small lone object at a named position, a
    pairing no pretraining caption has. The first gate pooled "named" and "outside" (colour 0.85).
    """
    rng = numpy.random.default_rng([seed, 20])
    out = []
    for _ in range(48):
        size, colour, shape = rng.choice(world.SIZES), rng.choice(world.COLOUR_NAMES), rng.choice(world.SHAPES)
        background = rng.choice([c for c in world.COLOUR_NAMES if c != colour])
        out.append(("named", f"a {size} {colour} {shape} on a {background} background",
                    {"size": world.SIZES.index(size), "colour": world.COLOUR_NAMES.index(colour),
                     "shape": world.SHAPES.index(shape), "background": world.COLOUR_NAMES.index(background),
                     "second": 0}))
    for position in ("left", "right", "top", "bottom") * 2:
        colour, shape = rng.choice(world.COLOUR_NAMES), rng.choice(world.SHAPES)
        out.append(("outside", f"a small {colour} {shape} {world.POSITION_WORDS[position]}",
                    {"position": world.POSITIONS.index(position), "colour": world.COLOUR_NAMES.index(colour)}))
    for _ in range(8):
        colour, c2 = rng.choice(world.COLOUR_NAMES, 2, replace=False)
        shape, s2 = rng.choice(world.SHAPES, 2)
        background = rng.choice([c for c in world.COLOUR_NAMES if c not in (colour, c2)])
        out.append(("two objects", f"a {colour} {shape} on a {background} background and a small {c2} {s2}",
                    {"second": 1, "second_colour": world.COLOUR_NAMES.index(c2),
                     "background": world.COLOUR_NAMES.index(background)}))
    rng = numpy.random.default_rng([seed, 21])       # a stream of its own: the sets above stay as they were
    for position in ("left", "right", "top", "bottom") * 2:
        colour, c2 = rng.choice(world.COLOUR_NAMES, 2, replace=False)
        shape, s2 = rng.choice(world.SHAPES, 2)
        out.append(("positioned", f"a large {colour} {shape} {world.POSITION_WORDS[position]} and a small {c2} {s2}",
                    {"position": world.POSITIONS.index(position), "colour": world.COLOUR_NAMES.index(colour),
                     "size": world.SIZES.index("large"), "second": 1}))
    return out


def run(unet, clip, vae, net, samples=8, seed=0, log=print):
    """Accuracy per head and prompt set. The gate is decided on "named" (one object, every attribute named):
    the attributes the gate asks for, each drawn on its own. The other sets measure composition (two objects,
    positions, which colour goes to which object), reported beside it."""
    from . import evaluator
    hits, rows, captions = {}, [], []
    concept_false_positive = []
    start = time.perf_counter()
    for k, (group, prompt, expected) in enumerate(prompts(seed)):
        images = graph.sample(unet, clip, vae, prompt, samples, seed=seed * 1000 + k)
        read = evaluator.read(net, images)
        for head, cls in expected.items():
            hits.setdefault(group, {}).setdefault(head, []).extend((read[head].argmax(1) == cls).tolist())
        concept_false_positive.extend((read["concept"].argmax(1) != 0).tolist())
        if k % 8 == 0:
            rows.append(images)
            captions.append(prompt)
    by_set = {g: {h: float(numpy.mean(v)) for h, v in heads.items()} for g, heads in hits.items()}
    counts = {g: {h: len(v) for h, v in heads.items()} for g, heads in hits.items()}
    accuracy = by_set["named"]
    result = {"accuracy": accuracy, "samples": counts["named"], "by_set": by_set, "samples_by_set": counts,
              "concept_false_positive": float(numpy.mean(concept_false_positive)),
              "passed": all(accuracy[h] >= t for h, t in GATE.items()), "seconds": time.perf_counter() - start}
    return result, rows, captions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt (72 prompts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(graph.ROOT, "docs", "toyworld"))
    args = parser.parse_args(argv)
    graph.setup(tempfile.mkdtemp(prefix="toyworld-gate-"))
    from . import evaluator
    from . import model as toy
    from .pictures import grid
    unet, clip, vae = toy.load()
    result, rows, captions = run(unet, clip, vae, evaluator.load(), args.samples, args.seed)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quality_gate.json"), "w") as f:
        json.dump(result, f, indent=1)
    grid(rows, captions, os.path.join(args.out, "base_samples.png"))
    for group, heads in result["by_set"].items():
        print(f"{group}:" + ("  (the gate)" if group == "named" else ""))
        for head, value in heads.items():
            bar = GATE.get(head) if group == "named" else None
            print(f"  {head:<14} {value:.3f}  (n={result['samples_by_set'][group][head]})" + (f"  gate >= {bar}" if bar else ""))
    print(f"  concept head fires on base samples: {result['concept_false_positive']:.3f}")
    print("quality gate " + ("PASSED" if result["passed"] else "FAILED") + f" ({result['seconds']:.0f} s)")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
