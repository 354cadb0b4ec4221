"""Subject-reference core (torch only): layer numbering, IP-Adapter files, regions, attention, the
subjref.v1 adapter file and the subject chain, each against a dense reference written here."""

import math
import os
import random

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import core.atomic_file as atomic_file
from core.errors import ConceptError, SubjectError
from core.ip_adapter import (FEATURE_EMBEDS, FEATURE_PENULTIMATE, FullProjection, IPAdapter, ImageProjection,
                             Resampler, detect, split_state_dict)
from core.subject_attention import GatedSelfAttention, reference_regional_attention, regional_image_attention
from core.subject_layers import block_path, ip_layer_numbers, ip_order, layer_key
from core.subject_regions import Box, mask_bbox, reference_crop, region_grid, resolve_box, subject_grids
from core.subjects import (BRANCHES_CFG, BRANCHES_DUAL_CFG, PLAIN, SUBJECT, Subject, branch_roles, check_chain,
                           table_for_guider, validate_timing)
from core.subjref_adapter import (FORMAT, AdapterConfig, SubjectAdapter, fourier_embedding, read_adapter,
                                  write_adapter)


# ----------------------------------------------------------------------------------------------------------
# float64 building blocks of the references (no torch.nn, no F.layer_norm / F.gelu)

def ln(x, w, b, eps=1e-5):
    x = x.double()
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w.double() + b.double()


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0)))


def lin(x, w, b=None):
    y = x.double() @ w.double().T
    return y if b is None else y + b.double()


def softmax(z, mask=None):
    z = z.double()
    if mask is not None:
        z = z.masked_fill(~mask, float("-inf"))
    z = z - z.amax(-1, keepdim=True)
    e = torch.exp(z)
    return e / e.sum(-1, keepdim=True)


def close(a, b, tol=1e-4):
    a, b = a.double(), b.double()
    err = (a - b).abs().max().item()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert err <= tol * (1 + b.abs().max().item()), err


# ----------------------------------------------------------------------------------------------------------
# subject_layers

SD15_PATHS = ([f"input_blocks.{i}.1.transformer_blocks.0.attn2" for i in (1, 2, 4, 5, 7, 8)]
              + ["middle_block.1.transformer_blocks.0.attn2"]
              + [f"output_blocks.{i}.1.transformer_blocks.0.attn2" for i in range(3, 12)])
SD15_WIDTHS = {("input", 1, 0): 320, ("input", 2, 0): 320, ("input", 4, 0): 640, ("input", 5, 0): 640,
               ("input", 7, 0): 1280, ("input", 8, 0): 1280, ("middle", 0, 0): 1280,
               **{("output", i, 0): (1280 if i < 6 else 640 if i < 9 else 320) for i in range(3, 12)}}
# (block, block ids, transformer depth) in diffusers' processor order: down, up, mid
SDXL_LAYOUT = [("input", (4, 5), 2), ("input", (7, 8), 10), ("output", (0, 1, 2), 10), ("output", (3, 4, 5), 2),
               ("middle", (0,), 10)]


def sdxl_paths():
    paths = []
    for block, ids, depth in SDXL_LAYOUT:
        for i in ids:
            prefix = "middle_block.1" if block == "middle" else f"{block}_blocks.{i}.1"
            paths += [f"{prefix}.transformer_blocks.{t}.attn2" for t in range(depth)]
    return paths


@pytest.mark.parametrize("path,key", [
    ("input_blocks.1.1.transformer_blocks.0.attn2", ("input", 1, 0)),
    ("input_blocks.4.1.transformer_blocks.1.attn2", ("input", 4, 1)),
    ("middle_block.1.transformer_blocks.2.attn2", ("middle", 0, 2)),
    ("middle_block.1.transformer_blocks.0.attn2", ("middle", 0, 0)),
    ("output_blocks.11.1.transformer_blocks.0.attn2", ("output", 11, 0)),
    ("output_blocks.2.1.transformer_blocks.9.attn2", ("output", 2, 9)),
])
def test_layer_key_parses_attn2_paths(path, key):
    assert layer_key(path) == key
    assert block_path(path) == path[: path.rindex(".")] and block_path(path).endswith(f"transformer_blocks.{key[2]}")


@pytest.mark.parametrize("path", ["input_blocks.1.1.transformer_blocks.0.attn1",
                                  "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
                                  "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2",
                                  "out.1.transformer_blocks.0.attn2", ""])
def test_layer_key_refuses_other_paths(path):
    with pytest.raises(ValueError):
        layer_key(path)


def test_ip_layer_numbers_sd15():
    keys = [layer_key(p) for p in SD15_PATHS]
    random.Random(3).shuffle(keys)                       # the numbering must not depend on the input order
    expected = {("input", 1, 0): 1, ("input", 2, 0): 3, ("input", 4, 0): 5, ("input", 5, 0): 7,
                ("input", 7, 0): 9, ("input", 8, 0): 11, ("middle", 0, 0): 31}
    expected.update({("output", i, 0): 13 + 2 * (i - 3) for i in range(3, 12)})
    assert ip_layer_numbers(keys) == expected
    assert ip_order(keys)[-1] == ("middle", 0, 0) and ip_order(keys)[0] == ("input", 1, 0)


def test_ip_layer_numbers_sdxl():
    paths = sdxl_paths()
    keys = [layer_key(p) for p in paths]
    random.Random(5).shuffle(keys)
    numbers = ip_layer_numbers(keys)
    expected, n = {}, 0
    for block, ids, depth in SDXL_LAYOUT:            # diffusers order, written out
        for i in ids:
            for t in range(depth):
                expected[(block, i, t)] = 2 * n + 1
                n += 1
    assert len(numbers) == 70 and numbers == expected
    assert sorted(numbers.values()) == list(range(1, 140, 2))
    assert sorted(v for k, v in numbers.items() if k[0] == "middle") == list(range(121, 140, 2))
    assert numbers[("input", 4, 0)] == 1 and numbers[("input", 4, 1)] == 3 and numbers[("input", 5, 0)] == 5
    assert numbers[("output", 0, 0)] == 49 and numbers[("output", 5, 1)] == 119


# ----------------------------------------------------------------------------------------------------------
# ip_adapter: files in tencent-ailab/IP-Adapter layouts

def _r(g, *shape):
    return torch.randn(shape, generator=g) / shape[-1] ** 0.5


def _norm(g, sd, prefix, width):
    sd[prefix + ".weight"] = 1 + 0.2 * torch.randn(width, generator=g)
    sd[prefix + ".bias"] = 0.2 * torch.randn(width, generator=g)


def ip_parts(variant, context=32, hidden=(24, 40, 24), feature=48, tokens=4, width=64, inner=128, depth=2,
             seed=0, empty=False):
    """(image_proj, ip_adapter) dicts in the layouts of the real files; ``empty``: shapes only (fast)."""
    g = torch.Generator().manual_seed(seed)
    r = (lambda *s: torch.empty(s)) if empty else (lambda *s: _r(g, *s))
    p = {}
    if variant == "base":                      # ImageProjModel
        p["proj.weight"], p["proj.bias"] = r(tokens * context, feature), r(tokens * context)
        _norm(g, p, "norm", context)
    elif variant == "plus":                    # Resampler
        p["latents"] = r(1, 16, width)
        p["proj_in.weight"], p["proj_in.bias"] = r(width, feature), r(width)
        for i in range(depth):
            _norm(g, p, f"layers.{i}.0.norm1", width)
            _norm(g, p, f"layers.{i}.0.norm2", width)
            p[f"layers.{i}.0.to_q.weight"] = r(inner, width)
            p[f"layers.{i}.0.to_kv.weight"] = r(2 * inner, width)
            p[f"layers.{i}.0.to_out.weight"] = r(width, inner)
            _norm(g, p, f"layers.{i}.1.0", width)
            p[f"layers.{i}.1.1.weight"] = r(4 * width, width)
            p[f"layers.{i}.1.3.weight"] = r(width, 4 * width)
        p["proj_out.weight"], p["proj_out.bias"] = r(context, width), r(context)
        _norm(g, p, "norm_out", context)
    elif variant == "full":                    # MLPProjModel
        p["proj.0.weight"], p["proj.0.bias"] = r(feature, feature), r(feature)
        p["proj.2.weight"], p["proj.2.bias"] = r(context, feature), r(context)
        _norm(g, p, "proj.3", context)
    elif variant == "faceid":                  # MLPProjModel of ip-adapter-faceid (InsightFace 512 -> 4 tokens)
        p["proj.0.weight"], p["proj.0.bias"] = r(64, 512), r(64)
        p["proj.2.weight"], p["proj.2.bias"] = r(4 * context, 64), r(4 * context)
        _norm(g, p, "norm", context)
    elif variant == "faceid_plus":             # ProjPlusModel
        p["proj.0.weight"], p["proj.0.bias"] = r(64, 512), r(64)
        p["proj.2.weight"], p["proj.2.bias"] = r(4 * context, 64), r(4 * context)
        _norm(g, p, "norm", context)
        p["perceiver_resampler.latents"] = r(1, 4, width)
        p["perceiver_resampler.proj_in.weight"] = r(width, context)
    else:
        raise ValueError(variant)
    ip = {}
    for n, h in enumerate(hidden):
        ip[f"{2 * n + 1}.to_k_ip.weight"] = r(h, context)
        ip[f"{2 * n + 1}.to_v_ip.weight"] = r(h, context)
    return p, ip


def flat(image_proj, ip):
    out = {f"image_proj.{k}": v for k, v in image_proj.items()}
    out.update({f"ip_adapter.{k}": v for k, v in ip.items()})
    return out


SD15_HIDDEN = tuple(SD15_WIDTHS[k] for k in sorted(SD15_WIDTHS, key=lambda k: ip_layer_numbers(SD15_WIDTHS)[k]))


@pytest.mark.parametrize("variant,kw,expect", [
    ("base", dict(context=768, feature=1024, tokens=4), ("base", 4, FEATURE_EMBEDS, 1024)),
    ("plus", dict(context=768, feature=1280, width=768, inner=768, depth=4), ("plus", 16, FEATURE_PENULTIMATE, 1280)),
    ("full", dict(context=768, feature=1280), ("full", 0, FEATURE_PENULTIMATE, 1280)),
])
def test_detect_sd15_layouts(variant, kw, expect):
    image_proj, ip = ip_parts(variant, hidden=SD15_HIDDEN, empty=True, **kw)
    spec = detect(image_proj, ip, "ip.bin")
    assert (spec.variant, spec.tokens, spec.feature, spec.feature_dim) == expect
    assert spec.context_dim == 768 and spec.family == "sd1"
    numbers = ip_layer_numbers(SD15_WIDTHS)
    assert spec.hidden == {numbers[k]: w for k, w in SD15_WIDTHS.items()}
    assert spec.hidden[31] == 1280 and spec.hidden[1] == 320 and spec.hidden[29] == 320
    assert spec.describe() == {"base": "IP-Adapter (sd1)", "plus": "IP-Adapter-plus (sd1)",
                               "full": "IP-Adapter-full (sd1)"}[variant]


def test_detect_small_widths_and_sdxl_context():
    spec = detect(*ip_parts("base", context=2048, feature=1280, tokens=4, hidden=(640, 1280), empty=True), "x")
    assert spec.family == "sdxl" and spec.tokens == 4 and spec.hidden == {1: 640, 3: 1280}
    spec = detect(*ip_parts("plus", context=32, feature=48), "x")
    assert spec.family == "context 32" and spec.hidden == {1: 24, 3: 40, 5: 24} and spec.tokens == 16


@pytest.mark.parametrize("variant", ["base", "plus", "full"])
def test_split_state_dict_nested_flat_and_training_forms(variant):
    image_proj, ip = ip_parts(variant)
    for sd in (flat(image_proj, ip), {"image_proj": image_proj, "ip_adapter": ip},
               {**{f"image_proj.{k}": v for k, v in image_proj.items()},
                **{f"adapter_modules.{k}": v for k, v in ip.items()}}):
        a, b = split_state_dict(sd)
        assert a.keys() == image_proj.keys() and b.keys() == ip.keys()
        assert all(a[k] is image_proj[k] for k in a) and all(b[k] is ip[k] for k in b)
    assert split_state_dict({"model.diffusion_model.x": torch.zeros(1)}) is None
    assert split_state_dict({}) is None


@pytest.mark.parametrize("variant,lora", [("faceid", False), ("faceid", True), ("faceid_plus", False),
                                          ("base", True)])
def test_faceid_files_are_refused(variant, lora):
    image_proj, ip = ip_parts(variant)
    if lora:
        ip["1.to_q_lora.down.weight"] = torch.zeros(4, 24)
        ip["1.to_q_lora.up.weight"] = torch.zeros(24, 4)
    with pytest.raises(SubjectError, match="FaceID") as e:
        detect(image_proj, ip, "faceid.bin")
    assert "'faceid.bin'" in str(e.value)
    with pytest.raises(SubjectError, match="FaceID"):
        IPAdapter.from_state_dict({"image_proj": image_proj, "ip_adapter": ip}, "faceid.bin")


def _renumber(ip, numbers):
    out = {}
    for new, old in zip(numbers, (1, 3, 5)):
        for kind in ("to_k_ip", "to_v_ip"):
            out[f"{new}.{kind}.weight"] = ip[f"{old}.{kind}.weight"]
    return out


def _damage(case, p, ip):
    if case == "gap":
        ip = _renumber(ip, (1, 3, 7))
    elif case == "zero_based":
        ip = _renumber(ip, (0, 2, 4))
    elif case == "k_v_shapes":
        ip["3.to_v_ip.weight"] = torch.zeros(41, 32)
    elif case == "context_differs":
        ip["3.to_k_ip.weight"], ip["3.to_v_ip.weight"] = torch.zeros(40, 33), torch.zeros(40, 33)
    elif case == "only_k":
        del ip["5.to_v_ip.weight"]
    elif case == "three_d":
        ip["3.to_k_ip.weight"] = torch.zeros(40, 32, 1)
    elif case == "unexpected":
        ip["3.to_q.weight"] = torch.zeros(40, 32)
    elif case == "no_layers":
        ip = {}
    elif case == "base_tokens":
        p["proj.weight"], p["proj.bias"] = torch.zeros(4 * 32 + 5, 48), torch.zeros(4 * 32 + 5)
    elif case == "base_norm":
        p["norm.weight"] = torch.zeros(31)
    elif case == "base_no_norm":
        del p["norm.weight"]
    return p, ip


@pytest.mark.parametrize("case", ["gap", "zero_based", "k_v_shapes", "context_differs", "only_k", "three_d",
                                  "unexpected", "no_layers", "base_tokens", "base_norm", "base_no_norm"])
def test_detect_refuses_damaged_files(case):
    p, ip = _damage(case, *ip_parts("base"))
    with pytest.raises(SubjectError, match="'bad.bin'"):
        detect(p, ip, "bad.bin")


def test_detect_refuses_layer_one_without_to_k_ip():
    """Layer 1 is where the context width is read: a file missing it must still be a SubjectError."""
    p, ip = ip_parts("base")
    del ip["1.to_k_ip.weight"]
    with pytest.raises(SubjectError, match="'bad.bin'"):
        detect(p, ip, "bad.bin")


@pytest.mark.parametrize("variant,key,shape", [
    ("plus", "proj_out.weight", (31, 64)),                 # proj_out does not give the layers' width
    ("full", "proj.2.weight", (31, 48)),
    ("plus", "layers.1.0.norm1.weight", (65,)),            # a Resampler tensor of the wrong shape
    ("plus", "layers.0.1.3.weight", (64, 255)),
    ("full", "proj.3.bias", (33,)),
    ("base", "proj.bias", (127,)),
])
def test_mismatched_shapes_are_refused(variant, key, shape):
    p, ip = ip_parts(variant)
    p[key] = torch.zeros(shape)
    with pytest.raises(SubjectError, match="'bad.safetensors'"):
        IPAdapter.from_state_dict(flat(p, ip), "bad.safetensors")


@pytest.mark.parametrize("variant,change", [("plus", "drop:layers.1.0.norm2.bias"), ("base", "add:foo.weight"),
                                            ("full", "drop:proj.0.bias"), ("plus", "drop:layers.0.0.to_q.weight")])
def test_missing_or_extra_image_proj_tensors_are_refused(variant, change):
    p, ip = ip_parts(variant)
    op, key = change.split(":")
    if op == "drop":
        del p[key]
    else:
        p[key] = torch.zeros(3)
    with pytest.raises(SubjectError, match="'bad.bin'"):
        IPAdapter.from_state_dict({"image_proj": p, "ip_adapter": ip}, "bad.bin")


def test_neither_layout_is_refused():
    with pytest.raises(SubjectError, match="'x.bin'"):
        IPAdapter.from_state_dict({"state_dict": {}}, "x.bin")


@pytest.mark.parametrize("variant", ["base", "plus", "full"])
@pytest.mark.parametrize("nested", [False, True])
def test_from_state_dict_round_trip(variant, nested):
    p, ip = ip_parts(variant, seed=1)
    sd = flat(p, ip)
    module = IPAdapter.from_state_dict({"image_proj": p, "ip_adapter": ip} if nested else sd, "ip.bin")
    own = module.state_dict()
    assert set(own) == set(sd)
    for k in sd:
        assert torch.equal(own[k], sd[k].float()), k
    assert not any(t.requires_grad for t in module.parameters()) and not module.training
    # K, V of a layer are the file's own to_k_ip / to_v_ip
    tokens = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2))
    for number in (1, 3, 5):
        k, v = module.keys_values(tokens, number)
        close(k, lin(tokens, ip[f"{number}.to_k_ip.weight"]), 1e-5)
        close(v, lin(tokens, ip[f"{number}.to_v_ip.weight"]), 1e-5)


def test_half_precision_file_loads_as_float32():
    p, ip = ip_parts("base", seed=4)
    sd = {k: v.half() for k, v in flat(p, ip).items()}
    module = IPAdapter.from_state_dict(sd, "ip.bin")
    assert all(t.dtype == torch.float32 for t in module.state_dict().values())
    assert torch.equal(module.state_dict()["image_proj.proj.weight"], sd["image_proj.proj.weight"].float())


def test_image_projection_is_reshape_and_layernorm():
    p, ip = ip_parts("base", tokens=4, seed=5)
    module = IPAdapter.from_state_dict(flat(p, ip), "ip.bin")
    assert isinstance(module.image_proj, ImageProjection)
    embeds = torch.randn(3, 48, generator=torch.Generator().manual_seed(6))
    got = module.tokens(embeds)
    ref = ln(lin(embeds, p["proj.weight"], p["proj.bias"]).reshape(3, 4, 32), p["norm.weight"], p["norm.bias"])
    assert got.shape == (3, 4, 32)
    close(got, ref)
    # the reshape is token-major: token t is rows t*D..(t+1)*D of proj
    t2 = ln(lin(embeds, p["proj.weight"][64:96], p["proj.bias"][64:96]), p["norm.weight"], p["norm.bias"])
    close(got[:, 2], t2)


def test_full_projection_is_mlp():
    p, ip = ip_parts("full", seed=7)
    module = IPAdapter.from_state_dict(flat(p, ip), "ip.bin")
    assert isinstance(module.image_proj, FullProjection)
    hidden = torch.randn(2, 7, 48, generator=torch.Generator().manual_seed(8))
    h = gelu(lin(hidden, p["proj.0.weight"], p["proj.0.bias"]))
    ref = ln(lin(h, p["proj.2.weight"], p["proj.2.bias"]), p["proj.3.weight"], p["proj.3.bias"])
    close(module.tokens(hidden), ref)


def reference_resampler(p, x, dim_head=64):
    """IP-Adapter's Resampler / PerceiverAttention / FeedForward (ip_adapter/resampler.py), float64."""
    b = x.shape[0]
    latents = p["latents"].double().repeat(b, 1, 1)
    x = lin(x, p["proj_in.weight"], p["proj_in.bias"])
    depth = len({k.split(".")[1] for k in p if k.startswith("layers.")})
    for i in range(depth):
        a = f"layers.{i}.0."
        xn = ln(x, p[a + "norm1.weight"], p[a + "norm1.bias"])
        lat = ln(latents, p[a + "norm2.weight"], p[a + "norm2.bias"])
        q = lin(lat, p[a + "to_q.weight"])
        kv = lin(torch.cat([xn, lat], dim=-2), p[a + "to_kv.weight"])
        inner = q.shape[-1]
        k, v = kv[..., :inner], kv[..., inner:]
        heads = inner // dim_head

        def split(z):
            return z.reshape(b, z.shape[1], heads, dim_head).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        scale = 1 / math.sqrt(math.sqrt(dim_head))
        w = softmax((q * scale) @ (k * scale).transpose(-2, -1))
        out = (w @ v).permute(0, 2, 1, 3).reshape(b, latents.shape[1], -1)
        latents = lin(out, p[a + "to_out.weight"]) + latents
        f = f"layers.{i}.1."
        hidden = gelu(lin(ln(latents, p[f + "0.weight"], p[f + "0.bias"]), p[f + "1.weight"]))
        latents = lin(hidden, p[f + "3.weight"]) + latents
    return ln(lin(latents, p["proj_out.weight"], p["proj_out.bias"]), p["norm_out.weight"], p["norm_out.bias"])


@pytest.mark.parametrize("width,inner,depth", [(64, 128, 2), (128, 128, 1)])
def test_resampler_matches_ip_adapter_reference(width, inner, depth):
    p, ip = ip_parts("plus", width=width, inner=inner, depth=depth, seed=9)
    p["latents"] = p["latents"] * 8            # latents of real files are O(1): make attention non-trivial
    module = IPAdapter.from_state_dict(flat(p, ip), "plus.bin")
    assert isinstance(module.image_proj, Resampler)
    hidden = torch.randn(2, 11, 48, generator=torch.Generator().manual_seed(10))
    got = module.tokens(hidden)
    ref = reference_resampler(p, hidden)
    assert got.shape == (2, 16, 32)
    close(got, ref, 2e-4)
    # and the latents do read the image: another image gives other tokens
    other = module.tokens(torch.randn(2, 11, 48, generator=torch.Generator().manual_seed(11)))
    assert (other - got).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------------------
# subject_regions

def test_mask_bbox():
    mask = torch.zeros(10, 20)
    mask[2:6, 4:10] = 1.0
    mask[7, 15] = 0.4                          # below 0.5: not the subject
    assert mask_bbox(mask, "m") == Box(4 / 20, 2 / 10, 6 / 20, 4 / 10)
    with pytest.raises(SubjectError, match="region_mask"):
        mask_bbox(torch.full((4, 4), 0.5), "region_mask")


def test_resolve_box():
    subject = torch.zeros(10, 10)
    subject[1:3, 2:5] = 1
    region = torch.zeros(20, 40)
    region[10:20, 0:8] = 1
    assert resolve_box(0, 0, 0, 0) == Box(0.0, 0.0, 1.0, 1.0)
    assert resolve_box(0.3, 0.2, 0, 0, subject_mask=subject) == Box(0.2, 0.1, 0.3, 0.2)
    assert resolve_box(0, 0, 0, 0, subject_mask=subject, region_mask=region) == Box(0.0, 0.5, 0.2, 0.5)
    assert resolve_box(0.1, 0.2, 0.5, 0.4, subject_mask=subject, region_mask=region) == Box(0.1, 0.2, 0.5, 0.4)
    assert resolve_box(0.6, 0, 0.4, 1) == Box(0.6, 0.0, 0.4, 1.0)
    with pytest.raises(SubjectError, match="subject_mask"):
        resolve_box(0, 0, 0, 0, subject_mask=torch.zeros(4, 4))


@pytest.mark.parametrize("x,y,w,h,what", [
    (0.8, 0.0, 0.4, 0.5, "outside"), (0.0, 0.7, 0.5, 0.5, "outside"), (-0.1, 0.0, 0.5, 0.5, "outside"),
    (0.0, 0.0, 0.3, 0.0, "zero size"), (0.0, 0.0, 0.0, 0.3, "zero size"), (0.0, 0.0, -0.2, 0.3, "zero size"),
    (float("nan"), 0.0, 0.3, 0.3, "number"),
])
def test_resolve_box_errors_name_the_box(x, y, w, h, what):
    with pytest.raises(SubjectError, match="box") as e:
        resolve_box(x, y, w, h)
    assert what in str(e.value)


def reference_grid(box, height, width):
    out = torch.zeros(height, width)
    for i in range(height):
        for j in range(width):
            cy, cx = (i + 0.5) / height, (j + 0.5) / width
            out[i, j] = float(box.y <= cy < box.y + box.height and box.x <= cx < box.x + box.width)
    return out.flatten()


def test_region_grid_cell_centre_rule():
    assert region_grid(Box(0.25, 0.0, 0.5, 0.5), None, 2, 4).tolist() == [0, 1, 1, 0, 0, 0, 0, 0]
    # a box that covers a cell only partly, short of its centre, does not take it
    assert region_grid(Box(0.0, 0.0, 0.12, 1.0), None, 1, 4).tolist() == [0, 0, 0, 0]
    assert region_grid(Box(0.0, 0.0, 0.13, 1.0), None, 1, 4).tolist() == [1, 0, 0, 0]
    g = random.Random(12)
    for height, width in ((8, 12), (5, 7), (13, 9), (64, 64)):
        for _ in range(5):
            x, y = g.uniform(0, 0.7), g.uniform(0, 0.7)
            box = Box(x, y, g.uniform(0.05, 1 - x), g.uniform(0.05, 1 - y))
            got = region_grid(box, None, height, width)
            assert got.shape == (height * width,) and torch.equal(got, reference_grid(box, height, width)), box


def reference_area(mask, height, width):
    big_h, big_w = mask.shape
    out = torch.zeros(height, width, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            r0, r1 = (i * big_h) // height, -((-(i + 1) * big_h) // height)
            c0, c1 = (j * big_w) // width, -((-(j + 1) * big_w) // width)
            out[i, j] = mask[r0:r1, c0:c1].double().mean()
    return out.flatten()


@pytest.mark.parametrize("size,grid", [((16, 24), (4, 6)), ((17, 23), (5, 4)), ((8, 8), (8, 8))])
def test_region_grid_from_mask_is_area_resize(size, grid):
    mask = torch.rand(size, generator=torch.Generator().manual_seed(13))
    got = region_grid(Box(0.0, 0.0, 0.1, 0.1), mask, *grid)           # the mask wins over the box
    close(got, reference_area(mask, *grid), 1e-6)


def test_subject_grids_scale_overlaps():
    a, b = Box(0.0, 0.0, 0.75, 1.0), Box(0.5, 0.0, 0.5, 1.0)
    half = torch.zeros(8, 8)
    half[:, :4] = 0.4
    grids = subject_grids([(a, None), (b, None), (Box(0, 0, 1, 1), half)], 2, 4)
    assert grids.shape == (3, 8)
    ra, rb, rc = reference_grid(a, 2, 4), reference_grid(b, 2, 4), reference_area(half, 2, 4).float()
    total = ra + rb + rc
    ref = torch.stack([ra, rb, rc]) / torch.where(total > 1, total, torch.ones_like(total))
    close(grids, ref, 1e-6)
    assert (grids.sum(0) <= 1 + 1e-6).all()
    # columns: 0: a + 0.4 -> scaled; 2: a and b -> half each; 3: only b -> 1
    assert grids[:, 2].tolist() == [0.5, 0.5, 0.0] and grids[:, 3].tolist() == [0.0, 1.0, 0.0]
    assert abs(grids[0, 0].item() - 1 / 1.4) < 1e-6
    # under 1 in total: left alone
    small = subject_grids([(Box(0, 0, 1, 1), half), (Box(0, 0, 1, 1), half * 0.5)], 2, 4)
    close(small[:, 0], torch.tensor([0.4, 0.2]), 1e-6)


def test_reference_crop_white_background_bbox_and_square():
    g = torch.Generator().manual_seed(14)
    image = torch.rand(20, 30, 3, generator=g) * 0.9
    ys, xs = torch.meshgrid(torch.arange(20), torch.arange(30), indexing="ij")
    mask = ((((ys - 8.5) / 6) ** 2 + ((xs - 14.5) / 9) ** 2) <= 1).float()     # ellipse: bbox rows 3..14, cols 6..23
    rows = [i for i in range(20) if mask[i].max() > 0.5]
    cols = [j for j in range(30) if mask[:, j].max() > 0.5]
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = bottom - top, right - left
    assert (h, w) == (12, 18)
    side = max(h, w)
    ref = torch.ones(side, side, 3)
    for i in range(h):
        for j in range(w):
            if mask[top + i, left + j] > 0:
                ref[(side - h) // 2 + i, (side - w) // 2 + j] = image[top + i, left + j]
    got = reference_crop(torch.cat([image, torch.rand(20, 30, 1)], -1), mask)     # the alpha channel is dropped
    assert got.shape == (1, side, side, 3)
    close(got[0], ref, 1e-6)
    assert (got[0, :3] == 1).all() and (got[0, -3:] == 1).all()                 # white padding
    # without a mask: the whole image, padded square with white
    got = reference_crop(image[:10, :16], None)
    assert got.shape == (1, 16, 16, 3)
    assert torch.equal(got[0, 3:13], image[:10, :16]) and (got[0, :3] == 1).all() and (got[0, 13:] == 1).all()


# ----------------------------------------------------------------------------------------------------------
# subject_attention

def loop_regional_attention(q, keys, values, regions, heads):
    b, length, channels = q.shape
    d = channels // heads
    out = torch.zeros(b, length, channels, dtype=torch.float64)
    for bi in range(b):
        for s in range(keys.shape[1]):
            for h in range(heads):
                sl = slice(h * d, (h + 1) * d)
                k, v = keys[bi, s, :, sl].double(), values[bi, s, :, sl].double()
                for i in range(length):
                    scores = torch.tensor([float(q[bi, i, sl].double() @ k[t]) / math.sqrt(d)
                                           for t in range(k.shape[0])], dtype=torch.float64)
                    w = torch.exp(scores - scores.max())
                    w = w / w.sum()
                    out[bi, i, sl] += regions[bi, i, s].double() * (w[:, None] * v).sum(0)
    return out


@pytest.mark.parametrize("subjects", [1, 2, 3])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_regional_image_attention_matches_references(subjects, heads):
    g = torch.Generator().manual_seed(100 * subjects + heads)
    b, length, tokens, channels = 2, 10, 4, 16
    q = torch.randn(b, length, channels, generator=g)
    keys = torch.randn(b, subjects, tokens, channels, generator=g)
    values = torch.randn(b, subjects, tokens, channels, generator=g)
    regions = torch.rand(b, length, subjects, generator=g) * (torch.rand(b, length, subjects, generator=g) > 0.3)
    regions[0, :3] = 0                                # queries outside every region
    regions[1, 4] = 0
    got = regional_image_attention(q, keys, values, regions, heads)
    assert got.shape == (b, length, channels) and got.dtype == q.dtype
    close(got, reference_regional_attention(q, keys, values, regions, heads), 1e-5)
    close(got, loop_regional_attention(q, keys, values, regions, heads), 1e-5)
    assert torch.all(got[0, :3] == 0) and torch.all(got[1, 4] == 0)
    covered = regions.amax(-1) > 0
    assert (got.abs().sum(-1)[covered] > 0).all()


def test_regional_image_attention_is_per_subject_softmax():
    """A subject's share does not shrink when another subject is added (its own softmax)."""
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 6, 8, generator=g)
    keys, values = torch.randn(1, 2, 3, 8, generator=g), torch.randn(1, 2, 3, 8, generator=g)
    one = regional_image_attention(q, keys[:, :1], values[:, :1], torch.ones(1, 6, 1), heads=2)
    two = regional_image_attention(q, keys, values, torch.tensor([1.0, 0.0]).expand(1, 6, 2), heads=2)
    close(two, one, 1e-6)


def test_regional_image_attention_no_nan_with_large_scores():
    g = torch.Generator().manual_seed(8)
    q = 300 * torch.randn(2, 5, 8, generator=g)
    keys, values = 300 * torch.randn(2, 3, 4, 8, generator=g), torch.randn(2, 3, 4, 8, generator=g)
    regions = torch.zeros(2, 5, 3)
    regions[0, 1, 2] = 1
    regions[1, :, 0] = 0.5
    got = regional_image_attention(q, keys, values, regions, heads=2)
    assert torch.isfinite(got).all()
    assert torch.all(got[0, [0, 2, 3, 4]] == 0) and got[0, 1].abs().sum() > 0
    close(got, reference_regional_attention(q, keys, values, regions, 2), 1e-4)


def randomise_(module, seed, alpha_attn=0.8, alpha_dense=-0.6):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("alpha_attn"):
                p.fill_(alpha_attn)
            elif name.endswith("alpha_dense"):
                p.fill_(alpha_dense)
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return module


def reference_gated_self_attention(m, x, objs, heads, visible=None, region=None):
    """GLIGEN GatedSelfAttentionDense: attention over all N+M tokens of norm1([x, linear(objs)]), keep N."""
    sd = {k: v.double() for k, v in m.state_dict().items()}
    b, n, dim = x.shape
    x = x.double()
    grounding = lin(objs, sd["linear.weight"], sd["linear.bias"])
    h = ln(torch.cat([x, grounding], dim=1), sd["norm1.weight"], sd["norm1.bias"])
    total, d = h.shape[1], dim // heads
    q, k, v = (lin(h, sd[f"attn.to_{c}.weight"]).reshape(b, total, heads, d).transpose(1, 2) for c in "qkv")
    mask = None
    if visible is not None:                          # visual rows: all visual tokens + visible grounding tokens
        mask = torch.ones(visible.shape[0], total, total, dtype=torch.bool)
        mask[:, :n, n:] = visible
        mask = mask[:, None]
    w = softmax(q @ k.transpose(-2, -1) / math.sqrt(d), mask)
    out = (w @ v).transpose(1, 2).reshape(b, total, dim)
    out = lin(out, sd["attn.to_out.0.weight"], sd["attn.to_out.0.bias"])[:, :n]
    r = 1.0 if region is None else region.double()
    x = x + torch.tanh(sd["alpha_attn"]) * out * r
    if "ff.net.0.proj.weight" in sd:
        proj = lin(ln(x, sd["norm2.weight"], sd["norm2.bias"]), sd["ff.net.0.proj.weight"], sd["ff.net.0.proj.bias"])
        value, gate = proj[..., : 4 * dim], proj[..., 4 * dim:]
        ff = lin(value * gelu(gate), sd["ff.net.2.weight"], sd["ff.net.2.bias"])
        x = x + torch.tanh(sd["alpha_dense"]) * ff * r
    return x


@pytest.mark.parametrize("feed_forward", [True, False])
@pytest.mark.parametrize("heads", [1, 4])
def test_gated_self_attention_matches_gligen(feed_forward, heads):
    m = randomise_(GatedSelfAttention(32, 12, heads, feed_forward), seed=heads)
    g = torch.Generator().manual_seed(20)
    x, objs = torch.randn(2, 9, 32, generator=g), torch.randn(2, 5, 12, generator=g)
    got = m(x, objs)
    close(got, reference_gated_self_attention(m, x, objs, heads), 1e-4)
    assert (got - x).abs().max() > 0.05
    keys = set(m.state_dict())
    assert {"linear.weight", "attn.to_q.weight", "attn.to_out.0.bias", "norm1.weight", "alpha_attn"} <= keys
    assert ({"ff.net.0.proj.weight", "ff.net.2.weight", "norm2.weight", "alpha_dense"} <= keys) == feed_forward
    assert m.state_dict()["ff.net.0.proj.weight" if feed_forward else "linear.weight"].shape == \
        ((256, 32) if feed_forward else (32, 12))


def test_gated_self_attention_visibility_and_region():
    heads, n = 2, 6
    m = randomise_(GatedSelfAttention(16, 8, heads, True), seed=21)
    g = torch.Generator().manual_seed(22)
    x, objs = torch.randn(1, n, 16, generator=g), torch.randn(1, 6, 8, generator=g)    # subject 0: objs 0..2, 1: 3..5
    owner = torch.tensor([0, 0, 0, 1, 1, -1])                                          # token 5 in no region
    visible = (owner[:, None] == torch.arange(6)[None] // 3)[None]
    region = (owner >= 0).float()[None, :, None]
    got = m(x, objs, visible=visible, region=region)
    close(got, reference_gated_self_attention(m, x, objs, heads, visible, region), 1e-4)
    assert torch.equal(got[0, 5], x[0, 5])                                             # outside: untouched
    moved = objs.clone()
    moved[0, 3:] = torch.randn(3, 8, generator=g) * 3                                 # change subject 1's tokens
    again = m(x, moved, visible=visible, region=region)
    close(again[0, :3], got[0, :3], 1e-6)                                              # subject 0 rows cannot see them
    assert (again[0, 3:5] - got[0, 3:5]).abs().max() > 1e-3                            # subject 1 rows do
    # without the mask every row sees every grounding token
    free, free_moved = m(x, objs), m(x, moved)
    assert (free[0, :3] - free_moved[0, :3]).abs().max() > 1e-3


def test_gated_self_attention_closed_gates_are_identity():
    m = randomise_(GatedSelfAttention(16, 8, 2, True), seed=23, alpha_attn=0.0, alpha_dense=0.0)
    g = torch.Generator().manual_seed(24)
    x, objs = torch.randn(2, 5, 16, generator=g), torch.randn(2, 3, 8, generator=g)
    assert torch.equal(m(x, objs), x)
    with torch.no_grad():
        m.alpha_dense.fill_(0.5)
    assert (m(x, objs) - x).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------
# subjref_adapter

BLOCKS = (("input_blocks.1.1.transformer_blocks.0", 32), ("middle_block.1.transformer_blocks.0", 64),
          ("output_blocks.3.1.transformer_blocks.1", 48))


def config(preset="full", towers=(("l", 24),), family="sd1"):
    return AdapterConfig(family=family, preset=preset, vision_width=20, vision_embed_dim=18, n_patch=4, token_dim=16,
                         hidden_dim=12, heads=2, max_subjects=3, model_channels=8, blocks=BLOCKS, towers=towers)


def adapter(preset="full", seed=30, **kw):
    return randomise_(SubjectAdapter(config(preset, **kw)), seed, alpha_attn=0.3, alpha_dense=0.7)


def test_fourier_embedding_is_gligens():
    xyxy = torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0], [0.33, 0.05, 0.5, 0.75]])
    got = fourier_embedding(xyxy)
    assert got.shape == (3, 64)
    for row in range(3):
        for k in range(8):
            freq = 100 ** (k / 8)
            for j in range(4):
                value = freq * xyxy[row, j].item()
                assert abs(got[row, 8 * k + j].item() - math.sin(value)) < 1e-4
                assert abs(got[row, 8 * k + 4 + j].item() - math.cos(value)) < 1e-4
    assert fourier_embedding(torch.zeros(2, 5, 4)).shape == (2, 5, 64)


def mlp_keys(prefix):
    return {f"{prefix}.{part}.{p}" for part in ("layernorm", "fc1", "fc2") for p in ("weight", "bias")}


FUSER_LITE = {"linear.weight", "linear.bias", "attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight",
              "attn.to_out.0.weight", "attn.to_out.0.bias", "norm1.weight", "norm1.bias", "alpha_attn"}
FUSER_FF = {"ff.net.0.proj.weight", "ff.net.0.proj.bias", "ff.net.2.weight", "ff.net.2.bias", "norm2.weight",
            "norm2.bias", "alpha_dense"}


@pytest.mark.parametrize("preset", ["full", "lite"])
def test_file_tensor_keys_and_shapes(preset):
    towers = (("g", 40), ("l", 24))
    tensors = SubjectAdapter(config(preset, towers=towers, family="sdxl")).file_tensors()
    fuser = FUSER_LITE | (FUSER_FF if preset == "full" else set())
    expected = mlp_keys("grounding.linears_image") | mlp_keys("cls_mlp.l") | mlp_keys("cls_mlp.g")
    expected |= {"unet.mask_in.weight"}
    expected |= {f"unet.{path}.fuser.{k}" for path, _ in BLOCKS for k in fuser}
    assert set(tensors) == expected
    assert any(".ff." in k or "alpha_dense" in k or "norm2" in k for k in tensors) == (preset == "full")
    assert tensors["grounding.linears_image.fc1.weight"].shape == (12, 20 + 64)
    assert tensors["grounding.linears_image.fc2.weight"].shape == (16, 12)
    assert tensors["cls_mlp.g.fc2.weight"].shape == (40, 12) and tensors["cls_mlp.l.fc1.weight"].shape == (12, 18)
    assert tensors["unet.mask_in.weight"].shape == (8, 1, 3, 3)
    p = "unet.middle_block.1.transformer_blocks.0.fuser."
    assert tensors[p + "linear.weight"].shape == (64, 16) and tensors[p + "attn.to_q.weight"].shape == (64, 64)
    assert tensors[p + "alpha_attn"].shape == ()
    if preset == "full":
        assert tensors[p + "ff.net.0.proj.weight"].shape == (512, 64)
        assert tensors[p + "ff.net.2.weight"].shape == (64, 256)


def test_initialised_adapter_is_identity_and_grounding_tokens():
    a = SubjectAdapter(config()).initialise_(seed=3)
    g = torch.Generator().manual_seed(31)
    for path, width in BLOCKS:
        x, objs = torch.randn(1, 5, width, generator=g), torch.randn(1, 4, 16, generator=g)
        assert torch.equal(a.fuser_by_path[path](x, objs), x)
    assert not a.mask_in.weight.any()
    patches, xyxy = torch.randn(2, 4, 20, generator=g), torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]])
    sd = {k: v for k, v in a.state_dict().items() if k.startswith("grounding.")}
    mlp = "grounding.linears_image."
    inp = torch.cat([patches, fourier_embedding(xyxy)[:, None].expand(-1, 4, -1)], -1)
    ref = lin(gelu(lin(ln(inp, sd[mlp + "layernorm.weight"], sd[mlp + "layernorm.bias"]), sd[mlp + "fc1.weight"],
                       sd[mlp + "fc1.bias"])), sd[mlp + "fc2.weight"], sd[mlp + "fc2.bias"])
    close(a.grounding_tokens(patches, xyxy), ref, 1e-5)
    # the per-patch tokens differ between the two boxes only through the box
    assert a.grounding_tokens(patches, xyxy).shape == (2, 4, 16)


@pytest.mark.parametrize("preset", ["full", "lite"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_write_read_round_trip(tmp_path, preset, dtype):
    a = adapter(preset, towers=(("g", 40), ("l", 24)), family="sdxl")
    path = write_adapter(str(tmp_path / "subj.safetensors"), a, dtype=dtype, extra_metadata={"steps": 12})
    back = read_adapter(path)
    assert set(back.config.blocks) == set(BLOCKS) and back.config.towers == (("g", 40), ("l", 24))
    assert (back.config.preset, back.config.family, back.config.n_patch, back.config.heads) == (preset, "sdxl", 4, 2)
    ours, theirs = a.file_tensors(), back.file_tensors()
    assert ours.keys() == theirs.keys()
    for k in ours:
        if dtype == torch.float32:
            assert torch.equal(ours[k], theirs[k]), k
        else:
            assert torch.equal(ours[k].half().float(), theirs[k]), k
            close(theirs[k], ours[k], 2e-3)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT and meta["info.steps"] == "12" and meta["preset"] == preset
    # the read adapter computes what the written one does
    g = torch.Generator().manual_seed(32)
    x, objs = torch.randn(1, 5, 48, generator=g), torch.randn(1, 4, 16, generator=g)
    p = "output_blocks.3.1.transformer_blocks.1"
    close(back.fuser_by_path[p](x, objs), a.fuser_by_path[p](x, objs), 0 if dtype == torch.float32 else 5e-2)


def write_raw(path, tensors, metadata):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return str(path)


@pytest.mark.parametrize("case", ["format", "no_format", "preset", "bad_int", "missing", "extra", "shape", "nan",
                                  "inf", "int_dtype", "lite_as_full"])
def test_read_adapter_refuses_bad_files(tmp_path, case):
    a = adapter("lite" if case == "lite_as_full" else "full")
    tensors, meta = a.file_tensors(), a.config.metadata()
    if case == "format":
        meta["format"] = "subjref.v0"
    elif case == "no_format":
        del meta["format"]
    elif case == "preset":
        meta["preset"] = "huge"
    elif case == "bad_int":
        meta["token_dim"] = "sixteen"
    elif case == "missing":
        del tensors["grounding.linears_image.fc1.bias"]
    elif case == "extra":
        tensors["unet.input_blocks.1.1.transformer_blocks.0.fuser.gamma"] = torch.zeros(3)
    elif case == "shape":
        tensors["cls_mlp.l.fc1.weight"] = torch.zeros(12, 19)
    elif case in ("nan", "inf"):
        t = tensors["unet.middle_block.1.transformer_blocks.0.fuser.attn.to_v.weight"].clone()
        t[3, 5] = float("nan") if case == "nan" else float("inf")
        tensors["unet.middle_block.1.transformer_blocks.0.fuser.attn.to_v.weight"] = t
    elif case == "int_dtype":
        tensors["unet.mask_in.weight"] = torch.zeros(8, 1, 3, 3, dtype=torch.int32)
    elif case == "lite_as_full":
        meta["preset"] = "full"
    path = write_raw(tmp_path / "my-subject.safetensors", tensors, meta)
    with pytest.raises(SubjectError, match="'my-subject.safetensors'") as e:
        read_adapter(path)
    if case in ("nan", "inf"):
        assert "NaN or Inf" in str(e.value) and "attn.to_v.weight" in str(e.value)
    if case == "missing":
        assert "grounding.linears_image.fc1.bias" in str(e.value)
    if case == "shape":
        assert "cls_mlp.l.fc1.weight" in str(e.value)
    if case in ("format", "no_format"):
        assert "format" in str(e.value)


@pytest.mark.parametrize("keep", ["header_only", "half_data", "short_header", "four_bytes", "empty"])
def test_read_adapter_refuses_truncated_files(tmp_path, keep):
    path = write_adapter(str(tmp_path / "whole.safetensors"), adapter(), dtype=torch.float32)
    data = open(path, "rb").read()
    header_end = 8 + int.from_bytes(data[:8], "little")
    cut = {"header_only": header_end, "half_data": (header_end + len(data)) // 2, "short_header": header_end - 10,
           "four_bytes": 4, "empty": 0}[keep]
    broken = tmp_path / "cut.safetensors"
    broken.write_bytes(data[:cut])
    with pytest.raises(SubjectError, match="'cut.safetensors'"):
        read_adapter(str(broken))
    assert isinstance(read_adapter(path), SubjectAdapter)           # the whole file still reads


def test_read_adapter_uses_given_name(tmp_path):
    path = write_raw(tmp_path / "x.safetensors", adapter().file_tensors(), {"format": "other"})
    with pytest.raises(SubjectError, match="'Shown Name'"):
        read_adapter(path, "Shown Name")


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(".perfusion-") or n.endswith(".tmp"))


def test_write_adapter_never_overwrites(tmp_path):
    path = str(tmp_path / "s.safetensors")
    write_adapter(path, adapter(seed=1))
    before = open(path, "rb").read()
    with pytest.raises(ConceptError, match="already exists"):
        write_adapter(path, adapter(seed=2))
    assert open(path, "rb").read() == before and leftovers(tmp_path) == []
    assert os.listdir(tmp_path) == ["s.safetensors"]


def test_write_adapter_race_with_another_writer(tmp_path, monkeypatch):
    """A file that appears between the check and the link is not replaced; the temp file goes."""
    path = tmp_path / "s.safetensors"
    real = atomic_file.save_file

    def racing(tensors, tmp, metadata=None):
        path.write_bytes(b"someone else's file")
        real(tensors, tmp, metadata=metadata)

    monkeypatch.setattr(atomic_file, "save_file", racing)
    with pytest.raises(ConceptError, match="already exists"):
        write_adapter(str(path), adapter())
    assert path.read_bytes() == b"someone else's file" and leftovers(tmp_path) == []


def test_write_adapter_failure_leaves_nothing(tmp_path, monkeypatch):
    big = adapter()
    with torch.no_grad():
        big.cls_mlp["l"].fc2.weight[0, 0] = 1e6                     # beyond float16
    with pytest.raises(SubjectError, match="cls_mlp.l.fc2.weight"):
        write_adapter(str(tmp_path / "big.safetensors"), big)
    assert os.listdir(tmp_path) == []
    write_adapter(str(tmp_path / "big.safetensors"), big, dtype=torch.float32)   # fits float32
    assert os.listdir(tmp_path) == ["big.safetensors"]

    def failing(tensors, tmp, metadata=None):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(atomic_file, "save_file", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_adapter(str(tmp_path / "s.safetensors"), adapter())
    assert os.listdir(tmp_path) == ["big.safetensors"]


# ----------------------------------------------------------------------------------------------------------
# subjects

def subject(adapter_id="A", label="subject 1"):
    return Subject(adapter_id=adapter_id, box=Box(0, 0, 1, 1), region_mask=None, weight=1.0, start_percent=0.0,
                   end_percent=1.0, tokens=torch.zeros(4, 8), label=label)


def test_branch_roles_and_tables():
    cfg = table_for_guider(["positive", "negative"])
    assert cfg == BRANCHES_CFG == (SUBJECT, PLAIN)
    assert branch_roles([0, 1], cfg) == ["subject", "plain"]
    assert branch_roles([1, 0, 1], cfg) == ["plain", "subject", "plain"]
    dual = table_for_guider(["positive", "middle", "negative"])
    assert dual == BRANCHES_DUAL_CFG == (PLAIN, SUBJECT, SUBJECT)
    assert branch_roles([0, 1, 2], dual) == ["plain", "subject", "subject"]     # [negative, middle, positive]
    assert branch_roles([2, 0], dual) == ["subject", "plain"]
    assert branch_roles([0, 3, -1], cfg) == ["subject", "plain", "plain"]        # unknown indices: no subject
    assert table_for_guider(["positive"]) == BRANCHES_CFG


def test_check_chain():
    a, b = subject(label="subject 1"), subject(label="subject 2")
    assert check_chain([a, b], "A", "adapter A", 2) == (a, b)
    assert check_chain([a, b, a], "A", "adapter A", None) == (a, b, a)
    for empty in (None, [], ()):
        with pytest.raises(SubjectError, match="empty"):
            check_chain(empty, "A", "adapter A", 3)
    with pytest.raises(SubjectError, match="subject 2 was encoded for another adapter") as e:
        check_chain([a, subject("B", "subject 2")], "A", "my-adapter.bin", 3)
    assert "my-adapter.bin" in str(e.value)
    with pytest.raises(SubjectError, match="3 subjects.*at most 2"):
        check_chain([a, b, a], "A", "adapter A", 2)


@pytest.mark.parametrize("weight,start,end,ok", [
    (1.0, 0.0, 1.0, True), (0.0, 0.5, 0.5, True), (-1.0, 0.2, 0.8, True), (100.0, 0.0, 1.0, True),
    (1.0, 0.6, 0.4, False), (1.0, -0.1, 0.5, False), (1.0, 0.0, 1.1, False), (float("nan"), 0.0, 1.0, False),
    (101.0, 0.0, 1.0, False), (1.0, float("nan"), 1.0, False), (float("inf"), 0.0, 1.0, False),
])
def test_validate_timing(weight, start, end, ok):
    if ok:
        validate_timing(weight, start, end)
    else:
        with pytest.raises(SubjectError):
            validate_timing(weight, start, end)


def test_gated_self_attention_shared_region_computes_only_inside_rows_exactly():
    """One region for the whole batch takes the inside-rows path; per-row regions take the dense one."""
    m = randomise_(GatedSelfAttention(16, 8, 2, True), seed=31)
    g = torch.Generator().manual_seed(32)
    x, objs = torch.randn(2, 9, 16, generator=g), torch.randn(2, 4, 8, generator=g)
    region = torch.tensor([0, 1, 1, 0, 0.5, 0, 0, 1, 0])[None, :, None]
    visible = (region > 0).expand(1, 9, 4)
    shared = m(x, objs, visible, region)
    dense = m(x, objs, visible.expand(2, -1, -1), region.expand(2, -1, -1))
    close(shared, dense, 1e-5)
    assert torch.equal(shared[:, region[0, :, 0] == 0], x[:, region[0, :, 0] == 0])
    assert torch.equal(m(x, objs, visible, torch.zeros_like(region)), x)
