"""Cost of the MS-Diffusion backend at SDXL width, next to IP-Adapter-Plus SDXL in the same run. Needs COMFYUI_PATH.

1. Per sampling step. A full-width SDXL-shaped UNet (ComfyUI's own UNetModel with SDXL's layout: 320 channels,
   transformer depths 2 / 10, 70 cross-attention layers, context 2048; random weights) runs one forward through
   BaseModel.apply_model as a sampler calls it (batch = cond + uncond, cond_or_uncond [0, 1], context
   [2, 77, 2048]); that is the denominator. The inputs of its 70 attn2 layers are recorded, and the added work
   alone is timed layer by layer on them (steadier than differences of whole forwards on a busy machine):
     * "ip-plus": IP-Adapter-Plus SDXL (ip-adapter-plus_sdxl_vit-h layout: Resampler dim 1280, 20 heads, 16 tokens
       of width 2048, ViT-H features 1280), random weights, read by the pack's own IPAdapter class; its image
       term (IPAttention.image_term, one softmax per subject, regions; cond and uncond rows);
     * "ms-diffusion": the released layout (grounding resampler dim 1280, 20 heads, ViT-bigG features 1664,
       CLIP-L phrase 768, 70 layer pairs, 4 dummy tokens), random weights, through MSDiffusionAdapter; its image
       term (MSAttention.image_term: one joint masked softmax over [4 | 16 per subject], cond rows only);
   for 1 subject (left box [0, 0.25, 0.4, 0.75]) and 2 subjects (plus [0.6, 0.25, 1, 0.75], the official boxes),
   next to ComfyUI's own text attention on the same queries. Subjects are made by the real nodes.
   Targets (issue 12): MS-Diffusion's added cost <= IP-Adapter-Plus's + 10%; a step with 2 subjects <= 1.1x a
   step with one. The image term only computes the rows inside some box, so its cost follows the boxes' area.
2. One-off (--encoder): Subject Reference Encoder.encode of one subject with a full-size ViT-bigG CLIP vision
   (ComfyUI's comfy/clip_vision_config_g.json, random weights, ComfyUI's dtype choice) and the full-width
   resampler, next to the bare clip_vision.encode_image. The phrase is encoded by a tiny CLIP-L (its cost is
   a 77-token CLIP-L pass, not measured here).

    COMFYUI_PATH=/path/to/ComfyUI python bench/ms_diffusion_overhead.py [--latent 64] [--rounds 5]
        [--unet-weights fp16|fp32] [--encoder] [--threads N]

On CPU the UNet's weights default to fp16 storage (ComfyUI's manual cast computes in fp32): 5 GB instead of 10.
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
BOXES = ((0.0, 0.25, 0.4, 0.5), (0.6, 0.25, 0.4, 0.5))        # x, y, width, height: the official two-subject layout


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px, 128 = 1024 px)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each runs one UNet forward)")
    parser.add_argument("--unet-weights", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--encoder", action="store_true", help="also time the encoder (a full ViT-bigG pass)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    comfy_path = os.environ.get("COMFYUI_PATH")
    if not comfy_path:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    sys.path.insert(0, HERE)
    sys.path.insert(0, comfy_path)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import torch
    from comfy.cli_args import args as comfy_args
    comfy_args.cpu = True
    if args.threads:
        torch.set_num_threads(args.threads)
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.model_management
    import comfy.model_patcher
    import comfy.ops
    import comfy.sampler_helpers
    import comfy.supported_models
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    import tiny_models
    from ms_factory import MS_REAL, ms_image_proj, ms_layers
    from pack_loader import load_pack
    from subject_overhead import interleaved, report
    from subject_factory import layer_widths

    pack = load_pack()
    nodes_ = pack.nodes
    log = lambda *a: print(*a, file=sys.stderr, flush=True)   # noqa: E731
    print(f"torch {torch.__version__}, cpu, threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    config = tiny_models.sdxl_unet_config()
    config.update(model_channels=320, transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                  transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048, adm_in_channels=2816)
    model_config = comfy.supported_models.SDXL(config)
    model_config.unet_config.update({"num_head_channels": 64})
    if args.unet_weights == "fp16":
        model_config.set_inference_dtype(torch.float16, torch.float32)
    model = model_config.get_model({}, device=comfy.model_management.unet_offload_device())
    tiny_models.init_random_(model.diffusion_model, 0)
    base = tiny_models._patcher(model)
    params = sum(p.numel() for p in model.diffusion_model.parameters())
    widths, context = layer_widths(pack, base)
    assert len(widths) == 70 and context == 2048, (len(widths), context)
    log(f"built the SDXL UNet ({params / 1e6:.0f}M parameters) in {time.perf_counter() - t0:.0f} s")

    # Adapters at real width, stored in fp16 (their K/V are computed once per layer and cached; the per-step
    # cost is the attention on cached K/V, whatever the storage).
    g = torch.Generator().manual_seed(0)
    from subject_overhead import _norm, _rand
    ip_sd = {}
    w, inner, e = 1280, 20 * 64, 1280
    ip_sd.update({"image_proj.latents": torch.randn(1, 16, w, generator=g) / w ** 0.5,
                  "image_proj.proj_in.weight": _rand(g, torch, w, e), "image_proj.proj_in.bias": torch.zeros(w)})
    for i in range(4):
        p = f"image_proj.layers.{i}"
        _norm(g, torch, p + ".0.norm1", w, ip_sd)
        _norm(g, torch, p + ".0.norm2", w, ip_sd)
        ip_sd[p + ".0.to_q.weight"] = _rand(g, torch, inner, w)
        ip_sd[p + ".0.to_kv.weight"] = _rand(g, torch, 2 * inner, w)
        ip_sd[p + ".0.to_out.weight"] = _rand(g, torch, w, inner)
        _norm(g, torch, p + ".1.0", w, ip_sd)
        ip_sd[p + ".1.1.weight"] = _rand(g, torch, 4 * w, w)
        ip_sd[p + ".1.3.weight"] = _rand(g, torch, w, 4 * w)
    ip_sd["image_proj.proj_out.weight"], ip_sd["image_proj.proj_out.bias"] = _rand(g, torch, 2048, w), torch.zeros(2048)
    _norm(g, torch, "image_proj.norm_out", 2048, ip_sd)
    ip_sd.update({f"ip_adapter.{k}": v for k, v in ms_layers(g, widths, 2048).items()})
    ip_module = pack.core.ip_adapter.IPAdapter.from_state_dict(ip_sd, "bench-ip-plus_sdxl_vit-h", ops=comfy.ops.manual_cast,
                                                               dtype=torch.float16)
    del ip_sd
    ms_sd = {"image_proj": ms_image_proj(g, **{k: MS_REAL[k] for k in ("dim", "depth", "heads", "queries", "feature_dim",
                                                                        "phrase_dim", "context")}),
             "ms_adapter": ms_layers(g, widths, 2048), "dummy_image_tokens": torch.randn(1, 4, 2048, generator=g)}
    ms_module = pack.core.ms_diffusion.MSDiffusionAdapter.from_state_dict(ms_sd, "bench-ms_adapter", ops=comfy.ops.manual_cast,
                                                                          dtype=torch.float16)
    del ms_sd
    sa = nodes_.subject_adapter
    ip = sa.LoadedAdapter(sa.BACKEND_IP, ip_module, "bench-ip-plus_sdxl_vit-h")
    msd = sa.LoadedAdapter(sa.BACKEND_MS, ms_module, "bench-ms_adapter")
    print(f"UNet: SDXL shape, {params / 1e6:.0f}M parameters, weights {args.unet_weights}; ip: {ip.describe()}, "
          f"{sum(p.numel() for p in ip_module.parameters()) / 1e6:.0f}M; ms: {msd.describe()}, "
          f"{sum(p.numel() for p in ms_module.parameters()) / 1e6:.0f}M parameters (fp16 storage)")
    log(f"adapters ready after {time.perf_counter() - t0:.0f} s")

    # Subjects through the real nodes, with small CLIP models (the per-step cost does not depend on them):
    # a ViT-H-wide / ViT-bigG-wide 2-layer CLIP vision gives features of the right width.
    import json
    import comfy.clip_vision
    folder = os.path.dirname(comfy.clip_vision.__file__)

    def shallow_vision(name):
        with open(os.path.join(folder, name)) as f:
            cfg = json.load(f)
        cfg["num_hidden_layers"] = 2
        return tiny_models.clip_vision_from_config(cfg)
    vit_h, vit_g = shallow_vision("clip_vision_config_h.json"), shallow_vision("clip_vision_config_g.json")
    clip = tiny_models.tiny_clip("sdxl")
    phrase_width = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight.shape[-1]
    g2 = torch.Generator().manual_seed(1)
    image = torch.rand(1, 256, 256, 3, generator=g2)
    mask = torch.zeros(1, 256, 256)
    mask[:, 40:220, 60:200] = 1.0
    Encoder, Apply = nodes_.SubjectReferenceEncoder, nodes_.SubjectReferenceApply

    # the tiny CLIP-L is 32 wide; the released adapter reads 768: feed the phrase as MS_REAL's width by wrapping
    real_phrase = torch.randn(MS_REAL["phrase_dim"], generator=g2)
    nodes_.subject_nodes.phrase_embedding = lambda clip_, phrase: real_phrase      # noqa: E731 (bench only)
    del phrase_width

    def subjects_for(adapter, vision, count):
        out = None
        with torch.inference_mode():
            for k in range(count):
                out = Encoder().encode(vision, adapter, image, *BOXES[k], 1.0, 0.0, 1.0, subject_mask=mask, subjects=out,
                                       clip=clip, phrase=("dog", "cat")[k])[0]
        return out

    models = {}
    for label, adapter, vision in (("ip-plus", ip, vit_h), ("ms-diffusion", msd, vit_g)):
        for count in (1, 2):
            with torch.inference_mode():
                models[label, count] = Apply().apply(base, adapter, subjects_for(adapter, vision, count), scale=0.6)[0]

    side = args.latent
    x = torch.randn(2, 4, side, side, generator=g2)
    ctx = torch.randn(2, 77, 2048, generator=g2)
    y = torch.randn(2, 2816, generator=g2)
    sigma = torch.full((2,), 5.0)

    def forward(m):
        def run():
            comfy.model_management.load_models_gpu([m])
            options = copy.deepcopy(m.model_options)
            options.setdefault("transformer_options", {})
            comfy.sampler_helpers.prepare_model_patcher(m, {}, options)
            to = options["transformer_options"]
            to["cond_or_uncond"] = [0, 1]
            to["sigmas"] = sigma.clone()
            with torch.inference_mode():
                out = m.model.apply_model(x, sigma, c_crossattn=ctx, y=y, transformer_options=to)
            assert torch.isfinite(out).all()
        return run

    forward(base)()                                                    # warm-up (loads the model)
    sp = nodes_.subject_patch
    recorded, original = [], sp.IPAttention.__call__

    def spy(self, q, k, v, extra_options):
        block = extra_options["block"]
        recorded.append(((block[0], block[1], extra_options.get("block_index", 0)), q.clone(), k.clone(), v.clone(),
                         dict(extra_options)))
        return original(self, q, k, v, extra_options)
    sp.IPAttention.__call__ = spy                                      # MSAttention inherits __call__
    try:
        forward(models["ms-diffusion", 2])()
    finally:
        sp.IPAttention.__call__ = original
    assert len(recorded) == 70, len(recorded)
    patches = {key: m.model_options["transformer_options"]["patches_replace"]["attn2"] for key, m in models.items()}

    def layers(fn):
        def run():
            with torch.inference_mode():
                for key, q, k, v, eo in recorded:
                    fn(key, q, k, v, eo)
        return run
    configs = {"text attention (77 tokens)": layers(lambda key, q, k, v, eo: comfy_attention.optimized_attention(
        q, k, v, eo["n_heads"], attn_precision=eo.get("attn_precision"), transformer_options=eo))}
    for label in ("ip-plus", "ms-diffusion"):
        for count in (1, 2):
            configs[f"{label}, {count} subject{'s' if count > 1 else ''}"] = layers(
                lambda key, q, k, v, eo, p=patches[label, count]: p[key].image_term(q, eo))
    for fn in configs.values():
        fn()                                                           # fills the K/V caches (once per layer)
    # Each round: one UNet forward without subjects, then the added work of every configuration; a share is
    # taken within its round (this machine's load drifts between rounds) and the median over rounds reported.
    unet_name = "UNet forward, no subject"
    configs = {unet_name: forward(base), **configs}
    log(f"{args.rounds} rounds, each with a full SDXL UNet forward at latent {side} (a minute or more on 2 cores)")
    medians, runs = interleaved(configs, args.rounds, 0, log)
    report(f"Latent [2, 4, {side}, {side}] ({8 * side} px), cond+uncond, context [2, 77, 2048]: one SDXL UNet forward, "
           f"and the added work alone summed over the 70 attn2 layers on the inputs of one forward; median of "
           f"{args.rounds} rounds [min..max]:", medians, unet_name, runs)
    share = {name: statistics.median(t / u for t, u in zip(runs[name], runs[unet_name])) for name in configs}
    print("\n  share of an SDXL UNet forward without subjects (median over rounds of the ratio within a round):")
    for name in configs:
        if name != unet_name:
            print(f"  {name:<28} {100 * share[name]:6.2f}%")
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(runs[a], runs[b]))  # noqa: E731
    for count in (1, 2):
        suffix = f"{count} subject{'s' if count > 1 else ''}"
        print(f"  {suffix}: added work ms-diffusion / ip-plus = {ratio(f'ms-diffusion, {suffix}', f'ip-plus, {suffix}'):.2f} "
              f"(target <= 1.10; ip-plus computes cond and uncond rows, ms-diffusion the cond rows inside the boxes)")
    for label in ("ip-plus", "ms-diffusion"):
        one, two = share[f"{label}, 1 subject"], share[f"{label}, 2 subjects"]
        print(f"  {label}: a step with 2 subjects / a step with 1 = {(1 + two) / (1 + one):.3f} (target <= 1.10); "
              f"added work 2 / 1 = {ratio(f'{label}, 2 subjects', f'{label}, 1 subject'):.2f}; per subject and step "
              f"{100 * one:.2f}% (1 subject), {100 * two / 2:.2f}% (each of 2)")

    if args.encoder:
        del models, patches, recorded, base, model
        comfy.model_management.unload_all_models()
        import gc
        gc.collect()
        t0 = time.perf_counter()
        with open(os.path.join(folder, "clip_vision_config_g.json")) as f:
            cfg = json.load(f)
        vision = tiny_models.clip_vision_from_config(cfg)
        log(f"built ViT-bigG ({sum(p.numel() for p in vision.model.parameters()) / 1e6:.0f}M parameters, "
            f"{next(vision.model.parameters()).dtype}) in {time.perf_counter() - t0:.0f} s")
        crop = pack.core.subject_regions.ms_reference_crop(image[0], mask[0])

        def bare():
            with torch.inference_mode():
                vision.encode_image(crop, crop=False)

        def node():
            with torch.inference_mode():
                Encoder().encode(vision, msd, image, *BOXES[0], 1.0, 0.0, 1.0, subject_mask=mask, clip=clip, phrase="dog")
        medians, runs = interleaved({"clip_vision.encode_image": bare, "encode, ms-diffusion": node}, 2, 1)
        report("Subject Reference Encoder, one subject (ViT-bigG, 48 layers, + the full-width resampler); median of 2:",
               medians, "clip_vision.encode_image", runs)


if __name__ == "__main__":
    main()
