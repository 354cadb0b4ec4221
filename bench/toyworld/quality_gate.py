"""The quality gate: does the base model draw what its prompt says? Samples through KSampler from prompts
with known attributes and reads them back with the evaluator. Personalization figures count only if
colour and background accuracy are >= 0.9 and size >= 0.8 (shape, position and the second object are
reported too).

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
    """(prompt, {head: expected class}) for the three prompt sets."""
    rng = numpy.random.default_rng([seed, 20])
    out = []
    for _ in range(48):                       # every attribute named
        size, colour, shape = rng.choice(world.SIZES), rng.choice(world.COLOUR_NAMES), rng.choice(world.SHAPES)
        background = rng.choice([c for c in world.COLOUR_NAMES if c != colour])
        out.append((f"a {size} {colour} {shape} on a {background} background",
                    {"size": world.SIZES.index(size), "colour": world.COLOUR_NAMES.index(colour),
                     "shape": world.SHAPES.index(shape), "background": world.COLOUR_NAMES.index(background),
                     "second": 0}))
    for position in ("left", "right", "top", "bottom") * 2:
        colour, shape = rng.choice(world.COLOUR_NAMES), rng.choice(world.SHAPES)
        out.append((f"a small {colour} {shape} {world.POSITION_WORDS[position]}",
                    {"position": world.POSITIONS.index(position), "colour": world.COLOUR_NAMES.index(colour)}))
    for _ in range(8):
        colour, c2 = rng.choice(world.COLOUR_NAMES, 2, replace=False)
        shape, s2 = rng.choice(world.SHAPES, 2)
        background = rng.choice([c for c in world.COLOUR_NAMES if c not in (colour, c2)])
        out.append((f"a {colour} {shape} on a {background} background and a small {c2} {s2}",
                    {"second": 1, "second_colour": world.COLOUR_NAMES.index(c2),
                     "background": world.COLOUR_NAMES.index(background)}))
    return out


def run(unet, clip, vae, net, samples=8, seed=0, log=print):
    from . import evaluator
    hits, rows, captions = {}, [], []
    concept_false_positive = []
    start = time.perf_counter()
    for k, (prompt, expected) in enumerate(prompts(seed)):
        images = graph.sample(unet, clip, vae, prompt, samples, seed=seed * 1000 + k)
        read = evaluator.read(net, images)
        for head, cls in expected.items():
            hits.setdefault(head, []).extend((read[head].argmax(1) == cls).tolist())
        concept_false_positive.extend((read["concept"].argmax(1) != 0).tolist())
        if k % 8 == 0:
            rows.append(images)
            captions.append(prompt)
    accuracy = {h: float(numpy.mean(v)) for h, v in hits.items()}
    counts = {h: len(v) for h, v in hits.items()}
    result = {"accuracy": accuracy, "samples": counts, "concept_false_positive": float(numpy.mean(concept_false_positive)),
              "passed": all(accuracy[h] >= t for h, t in GATE.items()), "seconds": time.perf_counter() - start}
    return result, rows, captions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt (64 prompts)")
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
    for head, value in result["accuracy"].items():
        bar = GATE.get(head)
        print(f"  {head:<14} {value:.3f}  (n={result['samples'][head]})" + (f"  gate >= {bar}" if bar else ""))
    print(f"  concept head fires on base samples: {result['concept_false_positive']:.3f}")
    print("quality gate " + ("PASSED" if result["passed"] else "FAILED") + f" ({result['seconds']:.0f} s)")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
