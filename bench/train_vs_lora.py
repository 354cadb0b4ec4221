"""Training step time and peak memory: "Train Perfusion Concept" against ComfyUI's TrainLoraNode (rank 8),
on the same full-width SD1.5-shaped UNet (random weights), CLIP-L-shaped text encoder, images, batch
and resolution (issue 3's benchmark). Needs COMFYUI_PATH.

The covariance cache is seeded with a synthetic C (a random deep text encoder has a singular one; step
cost does not depend on its values). Each trainer runs in its own fresh process (so one's memory does not hide the other's), twice with
different step counts; the step time is the difference divided by the extra steps (setup excluded).
Peak memory is the peak resident set (CPU) or max_memory_allocated (CUDA) during training, above the
level after the models were built.

    COMFYUI_PATH=... python bench/train_vs_lora.py [--resolution 256] [--batch 1] [--steps 2 6] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    def __init__(self):
        self.peak, self._stop = rss_bytes(), False

    def __enter__(self):
        self.base = rss_bytes()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop = True
        self.thread.join()


def worker(which, steps, resolution, batch, out, device_choice="auto"):
    sys.path.insert(0, os.environ["COMFYUI_PATH"])
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import torch
    from comfy.cli_args import args
    if device_choice == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    args.cpu = device_choice == "cpu" or not torch.cuda.is_available()
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.supported_models_base
    import comfy.utils
    import folder_paths
    import tiny_models
    from pack_loader import load_pack

    device = comfy.model_management.get_torch_device()
    config = comfy.supported_models.SD15(tiny_models.sd15_unet_config(context_dim=768, model_channels=320))
    config.unet_config.update({"num_heads": 8, "num_head_channels": -1})
    model = config.get_model({}, device=comfy.model_management.unet_offload_device())
    tiny_models.init_random_(model.diffusion_model, 0, fan_in=True)
    model = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=comfy.model_management.unet_offload_device())
    clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel))
    tiny_models.init_random_(clip.cond_stage_model, 1, fan_in=True)
    vae = tiny_models.tiny_vae()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, resolution, resolution, 3, generator=g)
    work = tempfile.mkdtemp(prefix="perfusion-bench-")
    folder_paths.folder_names_and_paths["perfusion"] = ([work], {".safetensors"})
    pack = load_pack()
    covariance = pack.nodes.covariance_cache
    # A random deep text encoder collapses its token encodings (a trained CLIP does not), so its C is
    # singular and training would rightly refuse it; step cost does not depend on C's values, so the
    # cache is seeded with a well-conditioned C for this encoder's key.
    from concept_factory import random_covariance
    key = covariance.covariance_key(clip)
    pack.core.covariance.save_covariance(os.path.join(work, "covariance", f"{key}.safetensors"),
                                         random_covariance(768), key, {})
    with torch.inference_mode():
        if which == "lora":
            import nodes
            from comfy_extras.nodes_train import TrainLoraNode
            pixels = comfy.utils.common_upscale(images.movedim(-1, 1), resolution, resolution, "bicubic", "center").movedim(1, -1)
            latents = {"samples": vae.encode(pixels)}
            positive = nodes.CLIPTextEncode().encode(clip, "a photo of a teddy bear")[0]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with PeakRSS() as peak, torch.inference_mode():
        if which.startswith("perfusion"):
            pack.nodes.train_concept.train_concept(
                model, clip, vae, images, "sks", "teddy", steps=steps, batch_size=batch, grad_accumulation=1,
                resolution=resolution, seed=0, filename=f"bench_{steps}", progress=False,
                gradient_checkpointing=which == "perfusion_checkpointing")
        else:
            TrainLoraNode().train(model, latents, positive, batch, steps, 1, 0.0005, 8, "AdamW", "MSE", 0,
                                  "fp32", "fp32", "LoRA", False, "[None]")
    seconds = time.perf_counter() - start
    result = {"which": which, "steps": steps, "seconds": seconds, "peak_rss_above_base": peak.peak - peak.base}
    if device.type == "cuda":
        result["peak_cuda_above_base"] = torch.cuda.max_memory_allocated() - base_cuda
    with open(out, "w") as f:
        json.dump(result, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, nargs=2, default=[2, 6])
    parser.add_argument("--worker", nargs=2, metavar=("WHICH", "STEPS"))
    parser.add_argument("--out")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the GPU when torch sees one")
    args = parser.parse_args()
    if args.worker:
        which = args.worker[0]
        worker(which, int(args.worker[1]), args.resolution, args.batch, args.out, args.device)
        return
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    results = {}
    trainers = (("perfusion", "Train Perfusion Concept"),
                ("perfusion_checkpointing", "  with gradient_checkpointing"), ("lora", "TrainLoraNode, rank 8"))
    for which, _ in trainers:
        for steps in args.steps:
            out = tempfile.mktemp(suffix=".json")
            subprocess.run([sys.executable, __file__, "--worker", which, str(steps), "--out", out,
                            "--resolution", str(args.resolution), "--batch", str(args.batch), "--device", args.device], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(out) as f:
                results[(which, steps)] = json.load(f)
    lo, hi = args.steps
    print(f"SD1.5-shaped UNet (860M, random) + CLIP-L-shaped text encoder, resolution {args.resolution}, "
          f"batch {args.batch}, fp32, {'cuda' if 'peak_cuda_above_base' in results[('lora', lo)] else 'cpu'}")
    for which, label in trainers:
        a, b = results[(which, lo)], results[(which, hi)]
        step = (b["seconds"] - a["seconds"]) / (hi - lo)
        memory = max(a.get("peak_cuda_above_base", a["peak_rss_above_base"]),
                     b.get("peak_cuda_above_base", b["peak_rss_above_base"]))
        print(f"  {label:<30} {step:8.2f} s/step   peak memory above the loaded models {memory / 2**30:6.2f} GiB")


if __name__ == "__main__":
    main()
