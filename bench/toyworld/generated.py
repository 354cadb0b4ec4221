"""The evaluator against the base model's own samples: hard negatives to fine-tune its concept heads on, and
the figures that say whether fidelity can be trusted on generated images.

Renders and VAE round trips are not what a sampler draws: the base model draws blobs with halos and a small
decoder artefact beside the object. On those, the render-trained concept head called 31% of the base model's
"a photo of a yellow circle" samples striped-circle (red and white stripes): a method that learned only
"yellow" would have scored fidelity 0.3. The base model never saw a concept (its pretraining scenes hold
none), so every one of its samples is a negative for the concept heads; fine-tuning on them, with renders
and round trips still half of each batch, teaches the heads that a generated blob is not a pattern.

    cd bench && COMFYUI_PATH=... python -m toyworld.generated              # the figures, for the saved evaluator
    cd bench && COMFYUI_PATH=... python -m toyworld.generated --finetune   # fine-tune it first, then the figures

The figures (``docs/toyworld/evaluator_generated.json``), all on samples the fine-tuning never saw:
- ``floor``: per concept and foreground colour, the mean P(concept) on "a photo of a <colour> <superclass>"
  from the base model. Its maximum over colours is what a method that learned only a colour would score.
- ``false_positive``: the share of base samples of held-out pretraining captions whose concept head says
  any concept.
- ``img2img``: P(concept) on the concept's references re-drawn by the base model (VAEEncode, KSampler at a
  low denoise, "a photo of a <superclass>"): generated images that still show the pattern, so a head that
  learned "generated means no concept" would fail here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

import numpy

from . import graph
from . import world

OUT = os.path.join(graph.ROOT, "docs", "toyworld", "evaluator_generated.json")
NEGATIVE_SEED, HELD_OUT_SEED = 0, 1           # separate caption and noise streams for training / figures
DENOISE = (0.3, 0.5)


def base_samples(unet, clip, vae, count, seed, per_prompt=8, log=print):
    """``count`` base-model samples [count, 64, 64, 3] of pretraining-distribution captions (never empty)."""
    import torch
    rng = numpy.random.default_rng([seed, 40])
    out = []
    for k in range(-(-count // per_prompt)):
        text = ""
        while not text.strip():
            scene, position = world.random_scene(rng)
            text = world.caption(scene, position, rng)
        out.append(graph.sample(unet, clip, vae, text, per_prompt, seed=seed * 100003 + k))
        if (k + 1) % 32 == 0:
            log(f"  base samples: {(k + 1) * per_prompt}/{count}")
    return torch.cat(out)[:count]


def cached_negatives(unet, clip, vae, count, log=print):
    """The fine-tuning negatives, kept in the cache per model file (they take minutes to sample)."""
    import torch
    from . import model as toy
    with open(toy.BUNDLE, "rb") as f:
        key = hashlib.sha256(f.read()).hexdigest()[:12]
    path = os.path.join(graph.CACHE, f"evaluator-negatives-{key}-{count}-{NEGATIVE_SEED}.npy")
    if os.path.exists(path):
        return torch.from_numpy(numpy.load(path).astype(numpy.float32) / 255)
    start = time.perf_counter()
    images = base_samples(unet, clip, vae, count, NEGATIVE_SEED, log=log)
    os.makedirs(graph.CACHE, exist_ok=True)
    numpy.save(path + ".tmp.npy", (images.numpy() * 255).round().astype(numpy.uint8))
    os.replace(path + ".tmp.npy", path)
    log(f"sampled {count} negatives in {time.perf_counter() - start:.0f} s")
    return images


def finetune(net, negatives, round_trip, steps=400, batch=64, lr=5e-4, seed=0, log=print):
    """The evaluator's own training step (renders, half through the VAE), with a quarter of each batch
    replaced by generated negatives labelled "no concept" for both concept heads (the other heads are not
    trained on them: what the base model drew is not known for certain)."""
    import torch
    from . import evaluator
    torch.manual_seed(seed)
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    x_neg = negatives.movedim(-1, 1)
    k = batch // 4
    start = time.perf_counter()
    for step in range(steps):
        images, labels = evaluator.make_batch(numpy.random.default_rng([seed, 13, step]), batch - k)
        images = evaluator.degrade(images, g)
        with torch.no_grad():
            half = (batch - k) // 2
            images = torch.cat([round_trip(images[:half]), images[half:]])
        pick = torch.randint(len(x_neg), (k,), generator=g)
        images = torch.cat([images, x_neg[pick]])
        for head, y in labels.items():
            fill = 0 if head in ("concept", "second_concept") else -1
            labels[head] = torch.cat([y, torch.full((k,), fill, dtype=y.dtype)])
        loss, accuracy = evaluator.loss_and_accuracy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0:
            log(f"fine-tune step {step + 1}/{steps}  loss {loss.item():.3f}  concept {accuracy['concept']:.2f}  "
                f"{time.perf_counter() - start:.0f} s")
    return net.eval()


def figures(net, unet, clip, vae, samples=16, log=print):
    """See the module's docstring. Every sample here is drawn on ``HELD_OUT_SEED``'s streams."""
    import nodes
    import torch
    from . import evaluator
    floor, img2img = {}, {}
    for c, concept in enumerate(world.CONCEPTS):
        target = world.ALL_CONCEPTS.index(concept) + 1
        row = {}
        for j, colour in enumerate(world.COLOUR_NAMES):
            images = graph.sample(unet, clip, vae, f"a photo of a {colour} {concept.superclass}", samples,
                                  seed=HELD_OUT_SEED * 100003 + 7000 + 10 * c + j)
            row[colour] = float(evaluator.read(net, images)["concept"][:, target].mean())
        floor[concept.name] = row
        refs = torch.from_numpy(world.references(concept)).float()
        latent = graph.vae_encode(vae, refs)
        positive, negative = graph.encode(clip, f"a photo of a {concept.superclass}"), graph.encode(clip, "")
        for denoise in DENOISE:
            with torch.inference_mode():
                drawn = []
                for rep in range(-(-samples // len(refs))):
                    out = nodes.KSampler().sample(unet, HELD_OUT_SEED * 100003 + 9000 + rep, graph.SAMPLER["steps"],
                                                  graph.SAMPLER["cfg"], graph.SAMPLER["sampler_name"],
                                                  graph.SAMPLER["scheduler"], positive, negative, latent,
                                                  denoise=denoise)[0]
                    drawn.append(nodes.VAEDecode().decode(vae, out)[0])
            p = evaluator.read(net, torch.cat(drawn)[:samples])["concept"][:, target]
            img2img.setdefault(concept.name, {})[str(denoise)] = float(p.mean())
        log(f"  {concept.name}: floor (max over colours) {max(row.values()):.2f} "
            f"({max(row, key=row.get)}); img2img " + ", ".join(f"{d}: {v:.2f}" for d, v in img2img[concept.name].items()))
    held_out = base_samples(unet, clip, vae, 256, HELD_OUT_SEED, log=lambda *_: None)
    read = evaluator.read(net, held_out)
    fp = float((read["concept"].argmax(1) != 0).float().mean())
    fp_second = float((read["second_concept"].argmax(1) != 0).float().mean())
    log(f"  false positives on 256 held-out base samples: concept {fp:.3f}, second concept {fp_second:.3f}")
    return {"floor": floor, "floor_max": {n: max(r.values()) for n, r in floor.items()}, "img2img": img2img,
            "false_positive": fp, "false_positive_second": fp_second, "samples": samples}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finetune", action="store_true",
                        help="fine-tune the saved evaluator on base-model negatives first, and save it")
    parser.add_argument("--negatives", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--samples", type=int, default=16, help="samples per figure prompt")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--evaluator", default="", help="the evaluator to start from (default: the committed one)")
    parser.add_argument("--save-as", default="", help="where --finetune saves (default: the committed file)")
    args = parser.parse_args(argv)
    graph.setup(tempfile.mkdtemp(prefix="toyworld-generated-"))
    import torch
    from . import evaluator
    from . import model as toy
    torch.manual_seed(0)
    unet, clip, vae = toy.load()
    net = evaluator.load(args.evaluator or evaluator.WEIGHTS)
    weights = args.save_as or evaluator.WEIGHTS
    result = {}
    if os.path.exists(args.out):
        result = json.load(open(args.out))
    if args.finetune:
        print("the saved evaluator on generated samples:", flush=True)
        result["before"] = figures(net, unet, clip, vae, args.samples)
        start = time.perf_counter()
        negatives = cached_negatives(unet, clip, vae, args.negatives)
        round_trip = evaluator.vae_round_trip(toy.BUNDLE)
        net = finetune(net, negatives, round_trip, steps=args.steps)
        accuracy = {"renders": evaluator.accuracy_on_renders(net, degraded=False),
                    "vae_round_trip": evaluator.accuracy_on_renders(net, degraded=False, round_trip=round_trip)}
        for name, a in accuracy.items():
            print(f"{name + ':':<16}" + " ".join(f"{k} {v:.3f}" for k, v in a.items()))
        seconds = time.perf_counter() - start
        evaluator.save(net, weights, {"finetuned_on_samples": f"{args.negatives} negatives, {args.steps} steps",
                                                "seconds_samples": f"{seconds:.0f}",
                                                **{f"{n}.{k}": f"{v:.4f}" for n, a in accuracy.items() for k, v in a.items()}})
        result["finetune"] = {"negatives": args.negatives, "steps": args.steps, "seconds": seconds, "accuracy": accuracy}
        print(f"saved {weights} ({seconds:.0f} s)", flush=True)
    print("the evaluator on generated samples:", flush=True)
    result["after" if args.finetune or "before" in result else "figures"] = figures(net, unet, clip, vae, args.samples)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
