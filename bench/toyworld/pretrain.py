"""Pretrains the toy world's model: first the VAE, then the UNet and the text encoder together.

    cd bench && COMFYUI_PATH=... python -m toyworld.pretrain [--vae-steps 1000] [--steps 4800] [--out PATH]

Deterministic for a seed on one machine (every batch comes from ``default_rng([seed, stage, step])``).
Resumable: a checkpoint in ``--work`` every 250 steps; rerunning the command continues from it.
Budgeted by steps, not time. The diffusion stage keeps the best weights by a fixed validation loss
(EMA and raw weights both scored), with a warm-up and cosine-decaying learning rate: a constant rate
diverges on this model after ~2,700 steps.

The diffusion objective is ComfyUI's own parametrisation: ``x_t = noise_scaling(sigma, noise, x0)``,
``x0_hat = BaseModel.apply_model(x_t, sigma, c_crossattn=context)``, and the v-prediction loss
``|x0_hat - x0|^2 (sigma^2 + 1) / sigma^2``, so what KSampler samples is exactly what was trained.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import numpy

from . import comfy_env

comfy_env.setup()

import torch  # noqa: E402

from . import model as toy  # noqa: E402
from . import world  # noqa: E402

WORK = os.path.join(os.path.expanduser("~"), ".cache", "comfyui-perfusion-toyworld")
VALIDATE_EVERY = 250
LATENT_SCALE = 1.0              # the toy latent format's scale_factor (process_latent_in is the identity)


def world_token_ids(clip) -> list[int]:
    """Every token a world caption can contain, BOS/EOS included."""
    words = set(world.COLOUR_NAMES + world.SHAPES + world.SIZES)
    for phrase in list(world.POSITION_WORDS.values()) + list(world.PREFIXES) + ["a on background and small"]:
        words.update(phrase.split())
    ids = {49406, 49407}
    for word in sorted(words):
        ids.update(t for t, _ in clip.tokenize(word)["l"][0] if t not in (49406, 49407))
    return sorted(ids)


def images_tensor(images: numpy.ndarray) -> torch.Tensor:
    """[B, 64, 64, 3] in [0, 1] -> [B, 3, 64, 64] in [-1, 1] (the VAE's process_input)."""
    return torch.from_numpy(images).movedim(-1, 1) * 2 - 1


def cosine_lr(step, steps, peak, warmup=100, floor=0.05):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# --- stage 1: the VAE ------------------------------------------------------------------------------------

def train_vae(vae, steps, seed, batch=16, lr=2e-3, log=print):
    net = vae.first_stage_model.train()
    params = [p for p in net.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start = time.perf_counter()
    for step in range(steps):
        rng = numpy.random.default_rng([seed, 1, step])
        x = images_tensor(world.batch(rng, batch)[0])
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup=50)
        z = net.encode(x)
        # noise on the latent: the decoder must draw clean shapes from imperfect (sampled) latents
        noisy = z + 0.1 * z.detach().std() * torch.randn(z.shape, generator=torch.Generator().manual_seed(step))
        recon = net.decode(noisy)
        loss = torch.nn.functional.mse_loss(recon, x) + 1e-4 * z.square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step + 1}/{steps}  loss {loss.item():.5f}  {time.perf_counter() - start:.0f} s")
    net.eval()
    for p in params:
        p.requires_grad_(False)
    return net


@torch.no_grad()
def normalise_latents_(vae, seed, count=1024):
    """Folds a per-channel shift and scale into quant_conv / post_quant_conv so that the latents the
    UNet sees (process_latent_in) are zero-mean and unit-variance per channel."""
    net = vae.first_stage_model
    rng = numpy.random.default_rng([seed, 3])
    z = torch.cat([net.encode(images_tensor(world.batch(rng, 128)[0])) for _ in range(count // 128)])
    mean = z.mean(dim=(0, 2, 3))
    scale = z.std(dim=(0, 2, 3)) * LATENT_SCALE
    c = mean.numel()
    q, p = net.quant_conv, net.post_quant_conv
    q.weight[:c] /= scale[:, None, None, None]
    q.bias[:c] = (q.bias[:c] - mean) / scale
    p.bias += (p.weight[:, :, 0, 0] * mean[None]).sum(1)
    p.weight *= scale[None, :, None, None]
    z = net.encode(images_tensor(world.batch(rng, 256)[0])) * LATENT_SCALE
    return float(z.mean()), float(z.std())


# --- stage 2: UNet and text encoder -------------------------------------------------------------------------

def out_of_place_residuals(clip):
    """ComfyUI's CLIPLayer adds its residuals in place, which autograd cannot differentiate: give each
    layer of this (private) CLIP an out-of-place forward."""
    for layer in clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers:
        def forward(x, mask=None, optimized_attention=None, layer=layer):
            x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
            return x + layer.mlp(layer.layer_norm2(x))
        layer.forward = forward


def encode_texts(clip, texts):
    """[B, 77, 64] context, with gradients, through ComfyUI's SDClipModel (one chunk per caption)."""
    tokens = [[t for t, _ in clip.tokenize(text)["l"][0]] for text in texts]
    context, _ = clip.cond_stage_model.clip_l(tokens)
    return context


def v_loss(unet, context, x0, sigma, noise):
    sampling = unet.model.model_sampling
    xt = sampling.noise_scaling(sigma, noise, x0)
    x0_hat = unet.model.apply_model(xt, sigma, c_crossattn=context)
    weight = (sigma ** 2 + 1) / sigma ** 2
    return (((x0_hat - x0) ** 2).mean(dim=(1, 2, 3)) * weight).mean()


def validation_set(vae, seed, count=256):
    rng = numpy.random.default_rng([seed, 4])
    images, texts = world.batch(rng, count)
    with torch.no_grad():
        x0 = vae.first_stage_model.encode(images_tensor(images)) * LATENT_SCALE
    g = torch.Generator().manual_seed(seed + 4)
    return x0, texts, torch.randint(0, 1000, (count,), generator=g), torch.randn(x0.shape, generator=g)


@torch.no_grad()
def validate(unet, clip, val):
    x0, texts, timesteps, noise = val
    sigma = unet.model.model_sampling.sigmas[timesteps].float()
    losses = [v_loss(unet, encode_texts(clip, texts[i:i + 64]), x0[i:i + 64], sigma[i:i + 64], noise[i:i + 64]).item()
              for i in range(0, len(texts), 64)]
    return float(numpy.mean(losses))


def trainables(unet, clip):
    return [("unet", unet.model.diffusion_model), ("clip", clip.cond_stage_model)]


def encoded_dataset(vae, seed, count, log=print):
    """``count`` scenes rendered and VAE-encoded once (latents after process_latent_in); captions are
    drawn afresh at every use."""
    rng = numpy.random.default_rng([seed, 2])
    scenes, latents = [], []
    for start in range(0, count, 500):
        chunk = [world.random_scene(rng) for _ in range(min(500, count - start))]
        images = numpy.stack([world.render(scene, rng) for scene, _ in chunk])
        with torch.no_grad():
            latents.append(vae.first_stage_model.encode(images_tensor(images)) * LATENT_SCALE)
        scenes += chunk
    log(f"encoded {count} scenes")
    return scenes, torch.cat(latents)


def train_diffusion(unet, clip, vae, steps, seed, work, batch=64, lr=6e-4, scenes=40000, log=print, stop_at=None):
    for _, module in trainables(unet, clip):
        module.train()
        for p in module.parameters():
            p.requires_grad_(True)
    embedding = clip.cond_stage_model.clip_l.transformer.text_model.embeddings.token_embedding.weight
    others = [p for _, m in trainables(unet, clip) for p in m.parameters() if p is not embedding]
    # no weight decay on the token table: rows that never appear in a caption must stay as initialised
    optimizer = torch.optim.AdamW([{"params": others, "weight_decay": 0.01}, {"params": [embedding], "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.99))
    ema = {name: copy.deepcopy(module).eval() for name, module in trainables(unet, clip)}
    val = validation_set(vae, seed)
    best = {"loss": float("inf"), "step": 0, "which": "", "state": None}
    start_step, elapsed = 0, 0.0
    checkpoint = os.path.join(work, "diffusion-checkpoint.pt")
    if os.path.exists(checkpoint):
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        for name, module in trainables(unet, clip):
            module.load_state_dict(saved["model"][name])
            ema[name].load_state_dict(saved["ema"][name])
        optimizer.load_state_dict(saved["optimizer"])
        best, start_step, elapsed = saved["best"], saved["step"], saved["elapsed"]
        log(f"resumed at step {start_step}")
    out_of_place_residuals(clip)
    sampling = unet.model.model_sampling
    params = [p for group in optimizer.param_groups for p in group["params"]]
    last = min(steps, stop_at or steps)
    dataset, latents = encoded_dataset(vae, seed, scenes, log) if start_step < last else (None, None)
    t0 = time.perf_counter() - elapsed
    for step in range(start_step, last):
        rng = numpy.random.default_rng([seed, 2, step])
        pick = rng.integers(0, len(dataset), batch)
        texts = ["" if rng.random() < 0.1 else world.caption(*dataset[k], rng) for k in pick]
        x0 = latents[torch.from_numpy(pick)]
        g = torch.Generator().manual_seed(seed * 100003 + step)
        sigma = sampling.sigmas[torch.randint(0, 1000, (batch,), generator=g)].float()
        noise = torch.randn(x0.shape, generator=g)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        loss = v_loss(unet, encode_texts(clip, texts), x0, sigma, noise)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss {loss.item()} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, module in trainables(unet, clip):
                for pe, p in zip(ema[name].parameters(), module.parameters()):
                    pe.lerp_(p, 1 - decay)
        done = step + 1
        if done % 50 == 0:
            log(f"step {done}/{steps}  loss {loss.item():.4f}  lr {optimizer.param_groups[0]['lr']:.2e}  "
                f"{time.perf_counter() - t0:.0f} s")
        if done % VALIDATE_EVERY == 0 or done == steps or done == stop_at:
            for which in ("ema", "raw"):
                live = ema if which == "ema" else dict(trainables(unet, clip))
                scored = _swap(unet, clip, live)
                score = validate(unet, clip, val)
                _swap(unet, clip, scored)
                log(f"  validation ({which}) {score:.4f}")
                if score < best["loss"]:
                    best = {"loss": score, "step": done, "which": which,
                            "state": {n: copy.deepcopy(m.state_dict()) for n, m in live.items()}}
            torch.save({"model": {n: m.state_dict() for n, m in trainables(unet, clip)},
                        "ema": {n: m.state_dict() for n, m in ema.items()}, "optimizer": optimizer.state_dict(),
                        "best": best, "step": done, "elapsed": time.perf_counter() - t0}, checkpoint + ".tmp")
            os.replace(checkpoint + ".tmp", checkpoint)
    for name, module in trainables(unet, clip):
        module.load_state_dict(best["state"][name])
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    return best, time.perf_counter() - t0


def _swap(unet, clip, modules: dict):
    """Puts ``modules``' weights into the live models; returns the previous weights."""
    previous = {}
    for name, module in trainables(unet, clip):
        previous[name] = copy.deepcopy(module.state_dict())
        module.load_state_dict(modules[name].state_dict() if hasattr(modules[name], "state_dict") else modules[name])
    return previous


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=4800)
    parser.add_argument("--scenes", type=int, default=40000, help="pre-encoded scenes for the diffusion stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=toy.BUNDLE)
    parser.add_argument("--work", default=WORK, help="checkpoints (resumable)")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="stop the --steps schedule at this step and keep the best weights so far")
    parser.add_argument("--export-checkpoint", action="store_true",
                        help="write the bundle from the latest checkpoint's EMA weights and stop (a preview)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    work = os.path.join(args.work, f"seed{args.seed}-vae{args.vae_steps}-steps{args.steps}-scenes{args.scenes}")
    os.makedirs(work, exist_ok=True)
    logfile = open(os.path.join(work, "log.txt"), "a")

    def log(line):
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    unet, clip, vae = toy.fresh()
    vae_file = os.path.join(work, "vae.pt")
    t0 = time.perf_counter()
    if os.path.exists(vae_file):
        vae.first_stage_model.load_state_dict(torch.load(vae_file, map_location="cpu"))
        vae_seconds = float(open(vae_file + ".seconds").read())
        log("VAE from the checkpoint")
    else:
        train_vae(vae, args.vae_steps, args.seed, log=log)
        mean, std = normalise_latents_(vae, args.seed)
        log(f"latents after process_latent_in: mean {mean:.3f}, std {std:.3f}")
        vae_seconds = time.perf_counter() - t0
        torch.save(vae.first_stage_model.state_dict(), vae_file)
        open(vae_file + ".seconds", "w").write(str(vae_seconds))
    for p in vae.first_stage_model.parameters():
        p.requires_grad_(False)
    if args.export_checkpoint:
        saved = torch.load(os.path.join(work, "diffusion-checkpoint.pt"), map_location="cpu", weights_only=False)
        for name, module in trainables(unet, clip):
            module.load_state_dict(saved["ema"][name])
        toy.save(args.out, unet, clip, vae, world_token_ids(clip), {"preview_of_step": saved["step"]})
        log(f"exported the EMA weights of step {saved['step']} to {args.out}")
        return 0
    best, seconds = train_diffusion(unet, clip, vae, args.steps, args.seed, work, scenes=args.scenes, log=log,
                                    stop_at=args.stop_at)
    info = {"seed": args.seed, "vae_steps": args.vae_steps, "steps": args.steps, "stop_at": args.stop_at or args.steps,
            "best_step": best["step"],
            "best_weights": best["which"], "validation_loss": f"{best['loss']:.5f}",
            "vae_seconds": f"{vae_seconds:.0f}", "diffusion_seconds": f"{seconds:.0f}",
            "torch": torch.__version__}
    toy.save(args.out, unet, clip, vae, world_token_ids(clip), info)
    log(f"saved {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB): {info}")


if __name__ == "__main__":
    sys.exit(main())
