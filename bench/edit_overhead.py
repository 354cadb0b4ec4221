"""Cost of the Perfusion edit at SD1.5 width (issue 2's benchmark).

1. Per cross-attention layer: K+V projections of a [2, 77, 768] context for SD1.5's 16 layers,
   plain vs edited (1 concept); the shared input edit is computed once per forward, as in the UNet.
2. One full UNet forward of a full-width SD1.5-shaped UNet (random weights, 32x32 latent, batch 2)
   through ComfyUI's BaseModel.apply_model, with 0, 1 and 3 concepts. Needs COMFYUI_PATH.

Configurations are interleaved round by round and the median is reported.
    python bench/edit_overhead.py [--rounds 15] [--unet-rounds 7] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def timed(fn, sync):
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleaved(configs: dict, rounds: int, sync, warmup=2):
    for _ in range(warmup):
        for fn in configs.values():
            fn()
    times = {name: [] for name in configs}
    for _ in range(rounds):
        for name, fn in configs.items():
            times[name].append(timed(fn, sync))
    return {name: statistics.median(t) for name, t in times.items()}


def report(title, medians, base):
    print(f"\n{title}")
    for name, t in medians.items():
        extra = "" if name == base else f"  ({100 * (t / medians[base] - 1):+.2f}% vs {base})"
        print(f"  {name:<28} {t * 1e3:9.3f} ms{extra}")


def per_layer(args, torch, core):
    from concept_factory import FAMILY_TOWER_WIDTHS, SD15_LAYERS, make_concept
    device = torch.device(args.device)
    torch.manual_seed(0)
    layers = {p: (torch.nn.Linear(768, w, bias=False).to(device), torch.nn.Linear(768, w, bias=False).to(device))
              for p, w in SD15_LAYERS}
    concept = make_concept(core.concept_file.Concept, SD15_LAYERS, FAMILY_TOWER_WIDTHS["sd1"])
    stack = core.concept_stack.ConceptStack([concept], {"sks": core.gate_settings.GateSettings()})
    context = torch.randn(2, 77, 768, device=device)

    def plain():
        with torch.inference_mode():
            for k, v in layers.values():
                k(context), v(context)

    def edited():
        with torch.inference_mode():
            previous = stack.begin_forward(stack.default_plan)
            for path, (k, v) in layers.items():
                stack.key_forward(path, k.forward, context), stack.value_forward(path, v.forward, context)
            stack.end_forward(previous)

    def edited_uncached():          # worst case: the shared input edit recomputed for every layer
        with torch.inference_mode():
            for path, (k, v) in layers.items():
                stack.begin_forward(stack.default_plan)
                stack.key_forward(path, k.forward, context), stack.value_forward(path, v.forward, context)
            stack.end_forward(None)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    medians = interleaved({"plain K+V (16 layers)": plain, "edited K+V (16 layers)": edited,
                           "edited, no reuse": edited_uncached}, args.rounds, sync)
    report("Per-layer K+V projections, SD1.5 widths, context [2, 77, 768], 1 concept:", medians, "plain K+V (16 layers)")
    print(f"  per layer: plain {medians['plain K+V (16 layers)'] / 16 * 1e6:.1f} us, "
          f"edited {medians['edited K+V (16 layers)'] / 16 * 1e6:.1f} us")


def full_unet(args, torch, core):
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        print("\nFull UNet forward: skipped (set COMFYUI_PATH to a ComfyUI checkout)")
        return
    sys.path.insert(0, path)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args as comfy_args
    comfy_args.cpu = args.device == "cpu"
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sampler_helpers
    import comfy.supported_models
    import tiny_models
    from concept_factory import FAMILY_TOWER_WIDTHS, random_covariance, make_concept
    from pack_loader import load_pack
    pack = load_pack()
    patch = pack.nodes.model_patch
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    config = comfy.supported_models.SD15(tiny_models.sd15_unet_config(context_dim=768, model_channels=320))
    config.unet_config.update({"num_heads": 8, "num_head_channels": -1})           # SD1.5 itself
    model = config.get_model({}, device=offload_device)
    tiny_models.init_random_(model.diffusion_model)
    base = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    params = sum(p.numel() for p in model.diffusion_model.parameters())
    layers = [(p, m.to_v.out_features) for p, m in patch.cross_attention_layers(base).items()]
    C = random_covariance(768)
    concepts = [make_concept(pack.core.concept_file.Concept, layers, FAMILY_TOWER_WIDTHS["sd1"], trigger=t,
                             seed=k, covariance=C) for k, t in enumerate(("sks", "ohwx", "qpr"))]
    one = patch.apply_concept(base, concepts[0], 1.0)
    three = patch.apply_concept(patch.apply_concept(one, concepts[1], 1.0), concepts[2], 1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=g).to(load_device)
    context = torch.randn(2, 77, 768, generator=g).to(load_device)
    sigma = torch.full((2,), 5.0, device=load_device)

    def forward(m):
        def run():
            comfy.model_management.load_models_gpu([m])
            options = copy.deepcopy(m.model_options)
            options.setdefault("transformer_options", {})
            comfy.sampler_helpers.prepare_model_patcher(m, {}, options)
            with torch.inference_mode():
                m.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options["transformer_options"])
        return run

    sync = torch.cuda.synchronize if load_device.type == "cuda" else (lambda: None)
    # "no concept, again" is an A/A control: its difference to "no concept" is this machine's noise.
    medians = interleaved({"no concept": forward(base), "1 concept": forward(one), "3 concepts": forward(three),
                           "no concept, again": forward(base.clone())}, args.unet_rounds, sync, warmup=1)
    report(f"Full UNet forward, SD1.5 shape ({params / 1e6:.0f}M parameters, random), latent [2, 4, 32, 32], "
           f"context [2, 77, 768], {load_device}:", medians, "no concept")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--unet-rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, ROOT)
    import core.concept_file
    import core.concept_stack
    import core.gate_settings
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    per_layer(args, torch, core)
    full_unet(args, torch, core)


if __name__ == "__main__":
    main()
