"""Time from a slider change to the first sampling step (issue 4's benchmark): moving a Gate Strength
slider against changing a LoRA's strength, on a full-width SD1.5-shaped UNet (random weights) that
carries a rank-8 LoRA on every attention projection and one Perfusion concept. Needs COMFYUI_PATH.

What ComfyUI re-executes after each change is reproduced in process: the changed node (Gate
Strength, or the LoRA loader and everything after it), then the sampler; a model wrapper stamps the
first UNet call. Values alternate so nothing is served from a cache.

    COMFYUI_PATH=... python bench/slider_latency.py [--rounds 5] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the GPU when torch sees one")
    args = parser.parse_args()
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    sys.path.insert(0, os.environ["COMFYUI_PATH"])
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import torch
    from comfy.cli_args import args as comfy_args
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    comfy_args.cpu = args.device == "cpu" or not torch.cuda.is_available()
    import comfy.lora
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.utils
    import nodes

    comfy.utils.PROGRESS_BAR_ENABLED = False
    import tiny_models
    from concept_factory import make_concept, random_covariance
    from pack_loader import load_pack

    pack = load_pack()
    patch = pack.nodes.model_patch
    device = comfy.model_management.get_torch_device()
    config = comfy.supported_models.SD15(tiny_models.sd15_unet_config(context_dim=768, model_channels=320))
    config.unet_config.update({"num_heads": 8, "num_head_channels": -1})
    unet = config.get_model({}, device=comfy.model_management.unet_offload_device())
    tiny_models.init_random_(unet.diffusion_model)
    base = comfy.model_patcher.ModelPatcher(unet, load_device=device, offload_device=comfy.model_management.unet_offload_device())

    # A rank-8 LoRA (kohya keys) on every attention projection, loaded the way LoraLoader does.
    g = torch.Generator().manual_seed(0)
    lora = {}
    for name, module in unet.diffusion_model.named_modules():
        if any(name.endswith(f".{a}.{p}") for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v")) or \
                name.endswith(".to_out.0") and ".attn" in name:
            key = "lora_unet_" + name.replace(".", "_")
            lora[f"{key}.lora_down.weight"] = torch.randn(8, module.in_features, generator=g) * 0.01
            lora[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 8, generator=g) * 0.01
            lora[f"{key}.alpha"] = torch.tensor(8.0)
    layers = [(p, m.to_v.out_features) for p, m in patch.cross_attention_layers(base).items()]
    concept = make_concept(pack.core.concept_file.Concept, layers, {"clip_l": 768}, covariance=random_covariance(768))

    def with_lora(strength):
        return comfy.sd.load_lora_for_models(base, None, lora, strength, 0)[0]

    first_call = {}

    def stamp(m):
        m = m.clone()
        m.add_wrapper_with_key("apply_model", "bench", lambda executor, *a, **k: first_call.setdefault("t", time.perf_counter()) and executor(*a, **k))
        return m

    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 77, 768, generator=g), {}]]
    negative = [[torch.randn(1, 77, 768, generator=g), {}]]
    latent = {"samples": torch.zeros(1, 4, 32, 32)}

    def sample(m):
        first_call.clear()
        with torch.inference_mode():
            nodes.common_ksampler(m, 0, 1, 7.0, "euler", "normal", positive, negative, latent)
        return first_call["t"]

    def after_gate_change(concept_model, beta):
        start = time.perf_counter()
        gated = patch.set_gate(concept_model, "", pack.core.gate_settings.GateSettings(beta=beta))   # Gate Strength
        return sample(stamp(gated)) - start

    def after_lora_change(strength):
        start = time.perf_counter()
        m = patch.apply_concept(with_lora(strength), concept, 1.0)                                      # LoRA + Load re-run
        return sample(stamp(m)) - start

    def one_step(m):
        start = time.perf_counter()
        with torch.inference_mode():
            nodes.common_ksampler(m, 0, 1, 7.0, "euler", "normal", positive, negative, latent)
        return time.perf_counter() - start

    concept_model = patch.apply_concept(with_lora(0.8), concept, 1.0)
    sample(stamp(concept_model))                                                                        # warm
    gate, lora_times, steps = [], [], []
    for r in range(args.rounds):
        lora_times.append(after_lora_change(0.9 if r % 2 == 0 else 0.8))
        concept_model = patch.apply_concept(with_lora(0.8), concept, 1.0)
        sample(stamp(concept_model))                                                                    # settle
        gate.append(after_gate_change(concept_model, 0.6 if r % 2 == 0 else 0.7))
        steps.append(one_step(concept_model))
    print(f"torch {torch.__version__}, {device}, full-width SD1.5-shaped UNet with a rank-8 LoRA on "
          f"{len(lora) // 3} attention projections and 1 concept, latent [1, 4, 32, 32], median of {args.rounds}")
    print(f"  slider change -> first UNet call, Gate Strength: {statistics.median(gate) * 1e3:9.1f} ms")
    print(f"  slider change -> first UNet call, LoRA strength: {statistics.median(lora_times) * 1e3:9.1f} ms")
    print(f"  one sampling step (cond + uncond), for scale:    {statistics.median(steps) * 1e3:9.1f} ms")


if __name__ == "__main__":
    main()
