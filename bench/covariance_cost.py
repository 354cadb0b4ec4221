"""What the covariance costs and gives on a real single-file checkpoint's text encoder.

Loads a checkpoint file the way CheckpointLoaderSimple does (comfy.sd.load_checkpoint_guess_config),
optionally behind CLIPSetLastLayer, and reports:
  - the encoder fingerprint's stability: the same file loaded twice (ComfyUI leaves SD1.5's missing
    text_projection uninitialised), and the text encoder cast to bf16 / fp16, against the tolerance;
  - the time to encode the corpus (every 77-token chunk) and the covariance it gives: tokens,
    captions, Ledoit-Wolf intensity, the intensity used, cond(S) and cond(C).

    COMFYUI_PATH=/path/to/ComfyUI python bench/covariance_cost.py CHECKPOINT.safetensors
        [--prompts N (default: the whole corpus)] [--clip-layer -2] [--corpus data/captions.txt] [--device cpu|cuda]

A CPU user pays the corpus once per text encoder (the result is cached in models/perfusion/covariance).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(os.path.dirname(HERE), "tests")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--prompts", type=int, default=0, help="first N prompts of the corpus (0: all)")
    parser.add_argument("--clip-layer", type=int, default=None)
    parser.add_argument("--corpus", default=None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()

    os.environ["PERFUSION_TEST_DEVICE"] = args.device
    import host                                   # ComfyUI from COMFYUI_PATH, on args.device
    import torch
    import comfy.sd
    pack = host.load_pack()
    cache = pack.nodes.covariance_cache
    fingerprints = pack.core.encoder_fingerprint

    def load():
        out = comfy.sd.load_checkpoint_guess_config(args.checkpoint, output_vae=False, output_clipvision=False)
        clip = out[1]
        if args.clip_layer is not None:
            clip = clip.clone()
            clip.clip_layer(args.clip_layer)
        return clip

    t0 = time.perf_counter()
    clip = load()
    print(f"loaded {os.path.basename(args.checkpoint)} in {time.perf_counter() - t0:.1f} s; "
          f"encoder {cache.encoder_name(clip)}", flush=True)
    with torch.inference_mode():
        fp = cache.encoder_fingerprint(clip)
        again = cache.encoder_fingerprint(load())
        print(f"fingerprint: second load distance {fingerprints.distance(fp, again):.3g} "
              f"(tolerance {fingerprints.TOLERANCE})", flush=True)
        for dtype in (torch.bfloat16, torch.float16):
            cast = load()
            cast.cond_stage_model.to(dtype)
            print(f"fingerprint: text encoder stored in {str(dtype)[6:]}: distance "
                  f"{fingerprints.distance(fp, cache.encoder_fingerprint(cast)):.3g}", flush=True)
            del cast

    captions = cache.read_corpus(args.corpus)
    if args.prompts:
        captions = captions[:args.prompts]
    done = [0]

    def progress(n, total):
        if n - done[0] >= 500 or n == total:
            done[0] = n
            rate = n / (time.perf_counter() - t0)
            print(f"  {n}/{total} prompts, {rate:.2f} prompts/s", flush=True)

    t0 = time.perf_counter()
    est = cache.compute_covariance(clip, captions, progress)
    seconds = time.perf_counter() - t0
    print(f"corpus: {len(captions)} prompts, {est.captions} captions, {est.tokens} token encodings "
          f"(positions: {cache.POSITIONS}) in {seconds:.0f} s ({seconds / 60:.1f} min)")
    print(f"covariance: Ledoit-Wolf intensity {est.ledoit_wolf:.3g}, used {est.intensity:.3g}, "
          f"cond(S) {est.sample_condition:.3g}, cond(C) {est.condition:.3g}")


if __name__ == "__main__":
    main()
