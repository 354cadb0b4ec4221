"""The toy world's evaluator: a small CNN that reads a 64x64 image's attributes (background, main object's
shape / size / position / colour, a second object and its colour) and which concept, if any, the main
object is. Trained on world renders only (torch, no ComfyUI), with the degradations generated samples
show (blur, noise, colour shifts); the concept head learns against hard negatives: plain objects in a
concept's colours and other patterns, colour pairs and shapes.

    cd bench && python -m toyworld.evaluator [--steps 1500]      # writes model/evaluator-v1.safetensors

Fidelity is the concept head's probability of the target concept; the heads' accuracy on the base
model's own samples is checked by ``toyworld.quality_gate``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy
import torch
from safetensors.torch import load_file, save_file

from . import world

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "model", "evaluator-v1.safetensors")
HEADS = {"background": len(world.COLOUR_NAMES), "shape": len(world.SHAPES), "size": len(world.SIZES),
         "position": len(world.POSITIONS), "colour": len(world.COLOUR_NAMES),
         "concept": len(world.ALL_CONCEPTS) + 1, "second": 2, "second_colour": len(world.COLOUR_NAMES),
         "second_concept": len(world.ALL_CONCEPTS) + 1}


class Evaluator(torch.nn.Module):
    """[B, 3, 64, 64] in [0, 1] -> {head: logits [B, classes]}; ``features`` [B, 256]."""

    def __init__(self):
        super().__init__()
        def block(i, o, deep=True):
            layers = [torch.nn.Conv2d(i, o, 3, stride=2, padding=1), torch.nn.GroupNorm(8, o), torch.nn.SiLU()]
            return layers + ([torch.nn.Conv2d(o, o, 3, padding=1), torch.nn.GroupNorm(8, o), torch.nn.SiLU()] if deep else [])
        self.trunk = torch.nn.Sequential(*block(3, 32, deep=False), *block(32, 64), *block(64, 96), *block(96, 128))  # 4x4
        self.fc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(128 * 16, 256), torch.nn.SiLU())
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(256, n) for k, n in HEADS.items()})

    def features(self, images):
        return self.fc(self.trunk(images * 2 - 1))

    def forward(self, images):
        f = self.features(images)
        return {k: head(f) for k, head in self.heads.items()}


def training_scene(rng):
    """Scenes for the evaluator: plain ones, the concepts in every context, and hard negatives."""
    u = rng.random()
    if u < 0.35:
        concept = world.ALL_CONCEPTS[int(rng.integers(len(world.ALL_CONCEPTS)))]
    elif u < 0.5:
        concept = world.distractor(rng)
    else:
        concept = None
    second = None
    if rng.random() < 0.3:                               # a second object, often a concept or a distractor
        v = rng.random()
        second = (world.ALL_CONCEPTS[int(rng.integers(len(world.ALL_CONCEPTS)))] if v < 0.4 else
                  world.distractor(rng) if v < 0.6 else True)
    if concept is None and rng.random() < 0.3:           # a plain object in a concept's colour
        k = world.ALL_CONCEPTS[int(rng.integers(len(world.ALL_CONCEPTS)))]
        scene, _ = world.random_scene(rng, shape=k.superclass, colour=k.colours[int(rng.integers(2))], second=second)
    else:
        scene, _ = world.random_scene(rng, concept, second=second)
    return scene


def degrade(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur, colour shift and noise of random strength, as in generated samples."""
    b = images.shape[0]
    sigma = torch.rand(b, generator=g) * 1.5
    k = torch.arange(-3, 4, dtype=torch.float32)
    kernel = torch.exp(-k[None] ** 2 / (2 * sigma[:, None].clamp_min(0.05) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)                          # [B, 7]
    x = images.reshape(1, b * 3, 64, 64)
    kx = kernel.repeat_interleave(3, 0)
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (3, 3, 0, 0), mode="replicate"), kx[:, None, None, :], groups=b * 3)
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, 3, 3), mode="replicate"), kx[:, None, :, None], groups=b * 3)
    x = x.reshape(b, 3, 64, 64)
    x = x + 0.05 * torch.randn(b, 3, 1, 1, generator=g) + torch.rand(b, 1, 1, 1, generator=g) * 0.06 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def make_batch(rng, n):
    scenes = [training_scene(rng) for _ in range(n)]
    images = torch.from_numpy(numpy.stack([world.render(s, rng) for s in scenes])).movedim(-1, 1)
    labels = {k: torch.tensor([s.labels()[k] for s in scenes]) for k in HEADS}
    return images, labels


def loss_and_accuracy(logits, labels):
    losses, accuracy = [], {}
    for k, y in labels.items():
        valid = y >= 0
        if valid.any():
            losses.append(torch.nn.functional.cross_entropy(logits[k][valid], y[valid]))
            accuracy[k] = (logits[k][valid].argmax(1) == y[valid]).float().mean().item()
    return sum(losses), accuracy


def train(steps=1500, batch=64, seed=0, lr=2e-3, log=print, net=None, round_trip=None):
    """``round_trip``: images -> images through the model's VAE; half of each batch goes through it, so
    the heads also read what the decoder can draw (fine-tuning an evaluator trained on renders)."""
    torch.manual_seed(seed)
    net = net or Evaluator()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        images, labels = make_batch(numpy.random.default_rng([seed, 10 if round_trip is None else 12, step]), batch)
        images = degrade(images, g)
        if round_trip is not None:
            half = batch // 2
            with torch.no_grad():
                images = torch.cat([round_trip(images[:half]), images[half:]])
        loss, accuracy = loss_and_accuracy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0:
            log(f"evaluator step {step + 1}/{steps}  loss {loss.item():.3f}  "
                + " ".join(f"{k} {v:.2f}" for k, v in accuracy.items()) + f"  {time.perf_counter() - start:.0f} s")
    return net.eval()


@torch.no_grad()
def accuracy_on_renders(net, seed=1, count=2000, degraded=True, round_trip=None):
    rng = numpy.random.default_rng([seed, 11])
    g = torch.Generator().manual_seed(seed)
    totals = {}
    for _ in range(count // 200):
        images, labels = make_batch(rng, 200)
        if degraded:
            images = degrade(images, g)
        if round_trip is not None:
            images = round_trip(images)
        _, accuracy = loss_and_accuracy(net(images), labels)
        for k, v in accuracy.items():
            totals.setdefault(k, []).append(v)
    return {k: float(numpy.mean(v)) for k, v in totals.items()}


def vae_round_trip(path):
    """images [B, 3, 64, 64] in [0, 1] -> decode(encode(images)) through the toy model's VAE."""
    from . import comfy_env
    comfy_env.setup()
    from . import model as toy
    if path.endswith(".pt"):
        _, _, vae = toy.fresh()
        vae.first_stage_model.load_state_dict(torch.load(path, map_location="cpu"))
    else:
        _, _, vae = toy.load(path)

    def round_trip(images):
        with torch.no_grad():
            return vae.decode(vae.encode(images.movedim(1, -1))).movedim(-1, 1).float().clamp(0, 1)
    return round_trip


def save(net, path=WEIGHTS, info=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in net.state_dict().items()}, path + ".tmp",
              metadata={"format": "toyworld.evaluator.v1", **{k: str(v) for k, v in (info or {}).items()}})
    os.replace(path + ".tmp", path)


def load(path=WEIGHTS) -> Evaluator:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: run `python -m toyworld.evaluator` in bench/")
    net = Evaluator()
    net.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    return net.eval()


@torch.no_grad()
def read(net, images: torch.Tensor, batch=256) -> dict:
    """images [B, H, W, 3] in [0, 1] (ComfyUI's IMAGE) -> {head: probabilities [B, classes]}."""
    x = images[..., :3].movedim(-1, 1).float()
    if x.shape[-1] != 64 or x.shape[-2] != 64:
        x = torch.nn.functional.interpolate(x, size=(64, 64), mode="area")
    out = {}
    for i in range(0, x.shape[0], batch):
        for k, v in net(x[i:i + batch]).items():
            out.setdefault(k, []).append(v.softmax(-1))
    return {k: torch.cat(v) for k, v in out.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=WEIGHTS)
    parser.add_argument("--finetune-on-vae", metavar="VAE",
                        help="fine-tune the saved evaluator with half of each batch through this VAE (a toy "
                             "bundle, or a pretraining vae.pt); needs COMFYUI_PATH")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    round_trip, info = None, {}
    if args.finetune_on_vae:
        round_trip = vae_round_trip(args.finetune_on_vae)
        net = train(args.steps, seed=args.seed, lr=5e-4, net=load(args.out).train(), round_trip=round_trip)
        info = {"finetuned_on_vae": os.path.basename(args.finetune_on_vae)}
    else:
        net = train(args.steps, seed=args.seed)
    net.eval()
    seconds = time.perf_counter() - start
    figures = {"renders": accuracy_on_renders(net, degraded=False), "degraded": accuracy_on_renders(net, degraded=True)}
    if round_trip is not None:
        figures["vae_round_trip"] = accuracy_on_renders(net, degraded=False, round_trip=round_trip)
    for name, accuracy in figures.items():
        print(f"{name + ':':<16}" + " ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    save(net, args.out, {"steps": args.steps, "seed": args.seed, "seconds": f"{seconds:.0f}", **info,
                         **{f"{n}.{k}": f"{v:.4f}" for n, a in figures.items() for k, v in a.items()}})
    print(f"saved {args.out} ({seconds:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
