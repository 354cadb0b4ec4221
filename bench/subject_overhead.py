"""Cost of subject reference at SD1.5 width (the subject-reference issue's benchmark). Needs COMFYUI_PATH.

1. Per sampling step: one UNet forward of a full-width SD1.5-shaped UNet (random weights, built in
   ComfyUI's own classes) through BaseModel.apply_model with the patcher's options, as a sampler
   calls it: latent [2, 4, 64, 64] (512 px), batch = cond + uncond (cond_or_uncond [0, 1]), context
   [2, 77, 768]. Configurations: no subject; 1 subject; 2 subjects in two disjoint boxes (left and
   right half), for
     * "ip": an IP-Adapter-Plus SD1.5 adapter with the real layout and dims (16 tokens of width 768,
       16 layer pairs to_k_ip / to_v_ip, Resampler dim 768, depth 4, 12 heads, ViT-H features 1280),
       random weights, written as an fp16 .safetensors file and read by the pack's own loader;
     * "subjref.v1": the pack's adapter, preset "lite", real dims (256 grounding tokens of width 768
       per subject, 8 fuser heads, one gated self-attention in each of the 16 transformer blocks,
       plus the location-mask channel on conv_in), random weights and open gates, written with
       write_adapter and read back by the same loader;
   and "no subject, again", an A/A control whose difference to "no subject" is this machine's noise.
   Subjects are made by the real nodes: SubjectReferenceEncoder.encode, then SubjectReferenceApply.
   Targets: one subject adds at most one extra attention per cross-attention layer (<= 5% of a
   forward); two regional subjects cost no more than 1.1x one subject. Then the added work alone
   (the IP image term, the subjref gated self-attention) is timed layer by layer on the recorded
   inputs of one forward, next to ComfyUI's own text attention on the same queries: on a busy
   machine this is far steadier than differences of whole forwards. (The gated self-attention only
   computes rows inside the subjects' regions, so its cost follows their area: two half-image
   boxes cover twice the area of one.)
2. One-off: SubjectReferenceEncoder.encode of a 512x512 photo with a subject mask, with a full-size
   ViT-H CLIP vision (ComfyUI's comfy/clip_vision_config_h.json, random weights; ComfyUI's own dtype
   choice for CLIP vision on this device), for the IP-Adapter-Plus adapter (two vision passes: the
   photo and IP-Adapter-Plus's uncond image) and the subjref lite adapter (vision_width 1280,
   vision_embed_dim 1024, n_patch 256). A bare clip_vision.encode_image is timed for comparison.

Configurations are interleaved round by round and the median is reported.

    COMFYUI_PATH=/path/to/ComfyUI python bench/subject_overhead.py [--latent 64] [--rounds 3] [--warmup 1]
        [--encode-runs 3] [--threads N] [--shallow-vision] [--skip-unet] [--skip-encoder] [--device cpu|cuda]

The default run takes about 7.5 minutes on a quiet 2-core CPU (11 s per forward);
--latent 32 --shallow-vision is a quick check.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CONTEXT = 768                      # SD1.5 text context
IP_TOKENS, IP_DIM, IP_DEPTH, IP_HEADS, IP_DIM_HEAD, IP_FF = 16, 768, 4, 12, 64, 4   # ip-adapter-plus_sd15
VIT_H_WIDTH, VIT_H_EMBED, VIT_H_PATCHES = 1280, 1024, 256
SUBJREF_HEADS, SUBJREF_HIDDEN = 8, 512     # hidden: GroundingNet / cls_mlp width (GLIGEN's PositionNet: 512)
BOXES = ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 0.5, 1.0))       # two disjoint regions: left half, right half


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(configs: dict, rounds: int, warmup: int, log=None):
    for _ in range(warmup):
        for fn in configs.values():
            fn()
    times = {name: [] for name in configs}
    for r in range(rounds):
        for name, fn in configs.items():
            times[name].append(timed(fn))
        if log:
            log(f"  round {r + 1}/{rounds} done")
    return {name: statistics.median(t) for name, t in times.items()}, times


def _rand(g, torch, *shape):
    return torch.randn(shape, generator=g) / shape[-1] ** 0.5


def _norm(g, torch, prefix, width, sd):
    sd[prefix + ".weight"] = 1 + 0.1 * torch.randn(width, generator=g)
    sd[prefix + ".bias"] = 0.1 * torch.randn(width, generator=g)


def ip_plus_state_dict(torch, pack, model, seed=0):
    """ip-adapter-plus_sd15.safetensors' flattened layout and shapes (tests/subject_factory.py at full dims)."""
    g = torch.Generator().manual_seed(seed)
    layers = pack.nodes.model_patch.cross_attention_layers(model)
    keys = {pack.core.subject_layers.layer_key(p): m.to_k.out_features for p, m in layers.items()}
    numbers = pack.core.subject_layers.ip_layer_numbers(keys)
    w, inner, e = IP_DIM, IP_HEADS * IP_DIM_HEAD, VIT_H_WIDTH
    sd = {"image_proj.latents": torch.randn(1, IP_TOKENS, w, generator=g) / w ** 0.5,
          "image_proj.proj_in.weight": _rand(g, torch, w, e), "image_proj.proj_in.bias": torch.zeros(w)}
    for i in range(IP_DEPTH):
        p = f"image_proj.layers.{i}"
        _norm(g, torch, p + ".0.norm1", w, sd)
        _norm(g, torch, p + ".0.norm2", w, sd)
        sd[p + ".0.to_q.weight"] = _rand(g, torch, inner, w)
        sd[p + ".0.to_kv.weight"] = _rand(g, torch, 2 * inner, w)
        sd[p + ".0.to_out.weight"] = _rand(g, torch, w, inner)
        _norm(g, torch, p + ".1.0", w, sd)
        sd[p + ".1.1.weight"] = _rand(g, torch, IP_FF * w, w)
        sd[p + ".1.3.weight"] = _rand(g, torch, w, IP_FF * w)
    sd["image_proj.proj_out.weight"], sd["image_proj.proj_out.bias"] = _rand(g, torch, CONTEXT, w), torch.zeros(CONTEXT)
    _norm(g, torch, "image_proj.norm_out", CONTEXT, sd)
    for key, number in numbers.items():
        hidden = keys[key]
        sd[f"ip_adapter.{number}.to_k_ip.weight"] = _rand(g, torch, hidden, CONTEXT)
        sd[f"ip_adapter.{number}.to_v_ip.weight"] = _rand(g, torch, hidden, CONTEXT)
    return sd


def subjref_lite(torch, pack, model, seed=0):
    """A subjref.v1 lite SubjectAdapter at real SD1.5 / ViT-H dims, random weights, open gates."""
    core = pack.core.subjref_adapter
    layers = pack.nodes.model_patch.cross_attention_layers(model)
    conv_in = model.get_model_object("diffusion_model").input_blocks[0][0]
    config = core.AdapterConfig(
        family="sd1", preset="lite", vision_width=VIT_H_WIDTH, vision_embed_dim=VIT_H_EMBED, n_patch=VIT_H_PATCHES,
        token_dim=CONTEXT, hidden_dim=SUBJREF_HIDDEN, heads=SUBJREF_HEADS, max_subjects=2,
        model_channels=conv_in.out_channels,
        blocks=tuple(sorted((p[: -len(".attn2")], m.to_q.in_features) for p, m in layers.items())),
        towers=(("l", CONTEXT),))
    from subject_factory import randomise_adapter_
    return randomise_adapter_(core.SubjectAdapter(config), seed, gates=0.5)


def vit_h(torch, tiny_models, layers=None, seed=0):
    """ComfyUI's ClipVisionModel from its own ViT-H config, random weights (ComfyUI skips init)."""
    import comfy.clip_vision
    with open(os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_h.json")) as f:
        config = json.load(f)
    if layers:
        config["num_hidden_layers"] = layers
    return tiny_models.clip_vision_from_config(config, seed), config


def reference(torch, size=512, seed=0):
    """A random photo [1, size, size, 3] and a subject mask [1, size, size] (an ellipse)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, size, size, 3, generator=g)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    mask = (((xs - 0.1) / 0.6) ** 2 + (ys / 0.7) ** 2 <= 1).float()[None]
    return image, mask


def report(title, medians, base, runs=None):
    print(f"\n{title}")
    for name, t in medians.items():
        extra = "" if name == base else \
            f"  {1e3 * (t - medians[base]):+9.1f} ms  ({100 * (t / medians[base] - 1):+6.2f}% vs {base})"
        spread = f"  [{min(runs[name]) * 1e3:.0f}..{max(runs[name]) * 1e3:.0f}]" if runs else ""
        print(f"  {name:<26} {t * 1e3:9.1f} ms{extra}{spread}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the UNet configurations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--layer-rounds", type=int, default=5, help="timed rounds of the per-layer section")
    parser.add_argument("--encode-runs", type=int, default=3, help="timed encodes per adapter")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--shallow-vision", action="store_true",
                        help="ViT-H widths with 2 layers instead of 32 (same output shapes; "
                             "encoder times not meaningful)")
    parser.add_argument("--skip-unet", action="store_true")
    parser.add_argument("--skip-encoder", action="store_true")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    comfy_path = os.environ.get("COMFYUI_PATH")
    if not comfy_path:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    # ComfyUI first on sys.path: its top-level `nodes` module must win over this pack's `nodes/` package.
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    sys.path.insert(0, comfy_path)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import torch
    from comfy.cli_args import args as comfy_args
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    comfy_args.cpu = args.device == "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sampler_helpers
    import comfy.supported_models
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    import tiny_models
    from pack_loader import load_pack

    pack = load_pack()
    load_adapter = pack.nodes.subject_adapter.load_adapter
    from safetensors.torch import save_file
    Encoder, Apply = pack.nodes.SubjectReferenceEncoder, pack.nodes.SubjectReferenceApply
    log = lambda *a: print(*a, file=sys.stderr, flush=True)    # noqa: E731 - progress, off the report
    print(f"torch {torch.__version__}, {args.device}, threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    config = comfy.supported_models.SD15(tiny_models.sd15_unet_config(context_dim=CONTEXT, model_channels=320))
    config.unet_config.update({"num_heads": 8, "num_head_channels": -1})           # SD1.5 itself
    model = config.get_model({}, device=offload_device)
    tiny_models.init_random_(model.diffusion_model)
    base = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    params = sum(p.numel() for p in model.diffusion_model.parameters())
    unet_dtype = next(model.diffusion_model.parameters()).dtype

    vision, vconfig = vit_h(torch, tiny_models, layers=2 if args.shallow_vision else None)
    vision_dtype = next(vision.model.parameters()).dtype
    # Both adapters go through files (fp16, as released IP-Adapter files are) and the pack's own loader.
    with tempfile.TemporaryDirectory() as folder:
        ip_path = os.path.join(folder, "ip-plus_sd15.safetensors")
        ref_path = os.path.join(folder, "ref-lite_sd15.safetensors")
        save_file({k: v.half().contiguous() for k, v in ip_plus_state_dict(torch, pack, base).items()}, ip_path)
        pack.core.subjref_adapter.write_adapter(ref_path, subjref_lite(torch, pack, base))
        ip = load_adapter(ip_path, "bench-ip-plus_sd15")
        ref = load_adapter(ref_path, "bench-ref-lite_sd15")
    assert ip.backend == "ip" and ip.module.spec.variant == "plus" and ip.module.spec.tokens == IP_TOKENS
    assert ref.backend == "subjref.v1" and ref.module.config.preset == "lite"
    layer = ip.module.ip_adapter["1"].to_k_ip
    print(f"adapters as loaded: {type(layer).__module__}.{type(layer).__qualname__}, {layer.weight.dtype}")
    log(f"built UNet, ViT-H ({vconfig['num_hidden_layers']} layers) and adapters in {time.perf_counter() - t0:.0f} s")
    print(f"UNet: SD1.5 shape, {params / 1e6:.0f}M parameters, {unet_dtype}; CLIP vision: ViT-H config, "
          f"{vconfig['num_hidden_layers']} layers, {sum(p.numel() for p in vision.model.parameters()) / 1e6:.0f}M "
          f"parameters, weights {vision_dtype} (ComfyUI's choice)")
    print(f"ip: {ip.describe()}, {IP_TOKENS} tokens x {CONTEXT}, Resampler dim {IP_DIM} depth {IP_DEPTH} heads "
          f"{IP_HEADS}, feature {ip.module.spec.feature} [{ip.module.spec.feature_dim}], "
          f"{sum(p.numel() for p in ip.module.parameters()) / 1e6:.1f}M parameters")
    c, ref_params = ref.module.config, sum(p.numel() for p in ref.module.parameters())
    print(f"subjref.v1: preset {c.preset}, {c.n_patch} tokens x {c.token_dim}, {c.heads} heads, "
          f"{len(c.blocks)} fusers, hidden {c.hidden_dim}, {ref_params / 1e6:.1f}M parameters")

    image, mask = reference(torch)

    # Nodes run under torch.inference_mode(), as ComfyUI's executor runs them. (Outside it, with grad on,
    # ComfyUI's CLIP vision kept memory from every encode here, gigabytes per ViT-H pass, until OOM.)
    def encode(adapter, box, subjects=None):
        with torch.inference_mode():
            return Encoder().encode(vision, adapter, image, *box, 1.0, 0.0, 1.0,
                                    subject_mask=mask, subjects=subjects)[0]

    def apply(adapter, subjects):
        with torch.inference_mode():
            return Apply().apply(base, adapter, subjects)[0]

    def encode_image(crop):
        with torch.inference_mode():
            return vision.encode_image(crop, crop=False)

    if not args.skip_unet:
        t0 = time.perf_counter()
        models = {"no subject": base}
        for label, adapter, shape in (("ip", ip, (IP_TOKENS, CONTEXT)), ("subjref", ref, (VIT_H_PATCHES, CONTEXT))):
            one = encode(adapter, BOXES[0])
            two = encode(adapter, BOXES[1], subjects=one)
            assert all(tuple(s.tokens.shape) == shape for s in two), [tuple(s.tokens.shape) for s in two]
            models[f"{label}: 1 subject"] = apply(adapter, one)
            models[f"{label}: 2 subjects"] = apply(adapter, two)
        models["no subject, again"] = base.clone()     # A/A control: its difference to "no subject" is noise
        log(f"encoded and applied subjects in {time.perf_counter() - t0:.0f} s")

        side = args.latent
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, side, side, generator=g).to(load_device)
        context = torch.randn(2, 77, CONTEXT, generator=g).to(load_device)
        sigma = torch.full((2,), 5.0, device=load_device)

        def forward(m):
            def run():
                comfy.model_management.load_models_gpu([m])
                options = copy.deepcopy(m.model_options)
                options.setdefault("transformer_options", {})
                comfy.sampler_helpers.prepare_model_patcher(m, {}, options)
                transformer_options = options["transformer_options"]
                transformer_options["cond_or_uncond"] = [0, 1]          # as calc_cond_batch sets them
                transformer_options["sigmas"] = sigma.clone()
                with torch.inference_mode():
                    out = m.model.apply_model(x, sigma, c_crossattn=context, transformer_options=transformer_options)
                assert torch.isfinite(out).all()
            return run

        t0 = time.perf_counter()
        log(f"{len(models) * (args.rounds + args.warmup)} UNet forwards to go")
        medians, runs = interleaved({name: forward(m) for name, m in models.items()}, args.rounds, args.warmup, log)
        report(f"UNet forward (per sampling step), latent [2, 4, {side}, {side}] ({8 * side} px), cond+uncond, "
               f"context [2, 77, {CONTEXT}]; median of {args.rounds} rounds [min..max]:", medians, "no subject", runs)
        none = medians["no subject"]
        print(f"  A/A noise: {100 * (medians['no subject, again'] / none - 1):+.2f}%")
        for label in ("ip", "subjref"):
            t1, t2 = medians[f"{label}: 1 subject"], medians[f"{label}: 2 subjects"]
            added = f"{(t2 - none) / (t1 - none):.2f}x" if t1 - none > 0.01 * none else "n/a (1 subject within 1%)"
            print(f"  {label}: 1 subject {100 * (t1 / none - 1):+.2f}% (target <= +5%); "
                  f"2 subjects / 1 subject = {t2 / t1:.3f} (target <= 1.1); added time, 2 vs 1: {added}")
        log(f"UNet section took {time.perf_counter() - t0:.0f} s")

        # The added work alone, layer by layer, on the inputs of one real forward: far less noisy than
        # differences of whole forwards on a busy machine.
        t0 = time.perf_counter()
        sp = pack.nodes.subject_patch
        recorded, original = [], sp.IPAttention.__call__

        def spy(self, q, k, v, extra_options):
            block = extra_options["block"]
            recorded.append(((block[0], block[1], extra_options.get("block_index", 0)), q.clone(), k.clone(),
                             v.clone(), dict(extra_options)))
            return original(self, q, k, v, extra_options)
        sp.IPAttention.__call__ = spy
        try:
            forward(models["ip: 2 subjects"])()
        finally:
            sp.IPAttention.__call__ = original
        assert len(recorded) == 16, len(recorded)
        ip_patches = {n: models[f"ip: {n}"].model_options["transformer_options"]["patches_replace"]["attn2"]
                      for n in ("1 subject", "2 subjects")}
        fusers = {n: models[f"subjref: {n}"].model_options["transformer_options"]["patches"]["middle_patch"][-1]
                  for n in ("1 subject", "2 subjects")}
        import comfy.ldm.modules.attention as comfy_attention

        def layers(fn):
            def run():
                with torch.inference_mode():
                    for key, q, k, v, eo in recorded:
                        fn(key, q, k, v, eo)
            return run
        configs = {"text attention (77 tokens)": layers(lambda key, q, k, v, eo: comfy_attention.optimized_attention(
                       q, k, v, eo["n_heads"], attn_precision=eo.get("attn_precision"), transformer_options=eo))}
        for n in ("1 subject", "2 subjects"):
            configs[f"ip image term, {n}"] = layers(lambda key, q, k, v, eo, p=ip_patches[n]: p[key].image_term(q, eo))
        for n in ("1 subject", "2 subjects"):
            # the attn2 query has the shape of the block's hidden state x that middle_patch gets
            configs[f"subjref fuser, {n}"] = layers(lambda key, q, k, v, eo, p=fusers[n]: p(q, eo))
        medians, runs = interleaved(configs, args.layer_rounds, 1)
        report(f"The added work alone, summed over the 16 cross-attention layers / transformer blocks, on the "
               f"inputs of one forward (latent {side}x{side}, cond+uncond); median of {args.layer_rounds} rounds:",
               medians, "text attention (77 tokens)", runs)
        for name, t in medians.items():
            print(f"  {name:<26} = {100 * t / none:5.2f}% of a UNet forward without subject")
        for label in ("ip image term", "subjref fuser"):
            t1, t2 = medians[f"{label}, 1 subject"], medians[f"{label}, 2 subjects"]
            print(f"  {label}: 2 subjects / 1 subject = {t2 / t1:.2f}x; 2 subjects add "
                  f"{100 * (t2 - t1) / none:.2f}% of a forward over 1 subject")
        log(f"per-layer section took {time.perf_counter() - t0:.0f} s")

    if not args.skip_encoder:
        t0 = time.perf_counter()
        crop = pack.core.subject_regions.reference_crop(image[0], mask[0])       # what the encoder shows CLIP
        configs = {"clip_vision.encode_image": lambda: encode_image(crop),
                   "encode, ip-plus": lambda: encode(ip, BOXES[0]),
                   "encode, subjref lite": lambda: encode(ref, BOXES[0])}
        medians, runs = interleaved(configs, args.encode_runs, 0 if not args.skip_unet else 1)   # warm already
        note = ", shallow: not the real cost" if args.shallow_vision else ""
        report(f"Subject Reference Encoder, one subject, 512x512 photo + subject mask, ViT-H "
               f"({vconfig['num_hidden_layers']} layers{note}); median of {args.encode_runs} runs [min..max]:",
               medians, "clip_vision.encode_image", runs)
        log(f"encoder section took {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
