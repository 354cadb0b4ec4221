"""MS-Diffusion core (torch only): the file layout at its real size, the grounding resampler at full width,
the Fourier box embedding, box rasterisation on square and non-square grids, the joint masked attention
and the reference crop, each against a dense reference written here from the official code's formulas
(msdiffusion/models/projection.py, attention_processor.py, dataset/datagenerator.py)."""

import math

import pytest
import torch

from core.errors import SubjectError
from core.ms_diffusion import (DEFAULT_SCALE, MASK_BIAS, NUM_DUMMY_TOKENS, MSDiffusionAdapter, attention_bias,
                               box_cells, column_weights, detect, flat_state_dict, joint_masked_attention,
                               split_state_dict, subject_cells)
from core.subject_layers import ip_layer_numbers
from core.subject_regions import ms_reference_crop
from core.subjref_adapter import fourier_embedding
from ms_factory import (MS_REAL, ms_flat, ms_image_proj, ms_layers, official_box_masks, official_ip_attention,
                        sdxl_layer_widths)


# ---- float64 references ----------------------------------------------------------------------------------

def ln(x, w, b, eps=1e-5):
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w.double() + b.double()


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def official_fourier(box, freqs=8, temperature=100):
    """FourierEmbedder.__call__: freq_bands[None, None] * x[..., None] -> stack(sin, cos) -> permute(0, 2, 3, 1)."""
    bands = (temperature ** (torch.arange(freqs, dtype=torch.float64) / freqs))[None, None]
    x = bands * box.double().unsqueeze(-1)                                     # [N, 4, F]
    return torch.stack((x.sin(), x.cos()), dim=-1).permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def reference_resampler(sd, features, phrase, box, heads):
    """Resampler.forward (latent_init_mode="grounding") written out in float64, one head at a time."""
    p = lambda k: sd[k].double()  # noqa: E731
    grounding = torch.cat([phrase.double(), official_fourier(box)], dim=-1)
    latents = gelu(grounding @ p("latent_proj.0.weight").t() + p("latent_proj.0.bias"))
    latents = latents @ p("latent_proj.2.weight").t() + p("latent_proj.2.bias")
    _, queries, dim = sd["grounding_latents"].shape
    latents = ln(latents.reshape(-1, queries, dim), sd["latent_norm.weight"], sd["latent_norm.bias"])
    x = features.double() @ p("proj_in.weight").t() + p("proj_in.bias")
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    for i in range(depth):
        a = f"layers.{i}.0."
        xn = ln(x, sd[a + "norm1.weight"], sd[a + "norm1.bias"])
        qn = ln(latents, sd[a + "norm2.weight"], sd[a + "norm2.bias"])
        q = qn @ p(a + "to_q.weight").t()
        k, v = (torch.cat([xn, qn], dim=1) @ p(a + "to_kv.weight").t()).chunk(2, dim=-1)
        d = q.shape[-1] // heads
        out = torch.zeros_like(q)
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            out[..., sl] = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d), -1) @ v[..., sl]
        latents = latents + out @ p(a + "to_out.weight").t()
        f = f"layers.{i}.1."
        hidden = gelu(ln(latents, sd[f + "0.weight"], sd[f + "0.bias"]) @ p(f + "1.weight").t())
        latents = latents + hidden @ p(f + "3.weight").t()
    latents = ln(latents, sd["attention_norm.weight"], sd["attention_norm.bias"])
    latents = latents @ p("proj_out.weight").t() + p("proj_out.bias")
    return ln(latents, sd["norm_out.weight"], sd["norm_out.bias"])


# ---- the file ---------------------------------------------------------------------------------------------

def test_real_layout_has_the_official_key_count_and_parameter_count():
    """59 image_proj keys (118,943,616 parameters), 140 ms_adapter keys at the odd numbers 1..139
    (340,787,200), the dummy tokens: 459,739,008 in all, 1.84 GB in fp32, the size of ms_adapter.bin."""
    real = ms_image_proj(torch.Generator().manual_seed(0), **{k: MS_REAL[k] for k in (
        "dim", "depth", "heads", "queries", "feature_dim", "phrase_dim", "context")})
    with torch.device("meta"):
        image_proj = {k: torch.empty(v.shape) for k, v in real.items()}
        ms = {f"{n}.{kind}.weight": torch.empty(w, 2048) for n, w in sdxl_layer_widths().items()
              for kind in ("to_k_ip", "to_v_ip")}
        dummy = torch.empty(1, 4, 2048)
        spec = detect(image_proj, ms, dummy, "ms_adapter.bin")
        module = MSDiffusionAdapter(spec)
    del real
    assert (spec.dim, spec.depth, spec.heads, spec.queries, spec.feature_dim, spec.phrase_dim, spec.context_dim,
            spec.grounding_hidden, spec.ff_dim, spec.dummy_tokens) == (1280, 4, 20, 16, 1664, 768, 2048, 1664, 5120, 4)
    assert spec.family == "sdxl" and len(spec.hidden) == 70 and sorted(spec.hidden) == list(range(1, 140, 2))
    state = module.state_dict()
    proj = {k: v for k, v in state.items() if k.startswith("image_proj.")}
    layers = {k: v for k, v in state.items() if k.startswith("ms_adapter.")}
    assert len(proj) == 59 and sum(v.numel() for v in proj.values()) == 118_943_616
    assert len(layers) == 140 and sum(v.numel() for v in layers.values()) == 340_787_200
    assert sum(v.numel() for v in state.values()) == 459_739_008
    assert set(state) == set(flat_state_dict(image_proj, ms, dummy))          # the file's keys, exactly


def test_both_file_forms_are_recognised_and_equal():
    g = torch.Generator().manual_seed(1)
    nested = {"image_proj": ms_image_proj(g, 128, 1, 2, 16, 48, 32, 80), "ms_adapter": ms_layers(g, {1: 64, 3: 128}, 80),
              "dummy_image_tokens": torch.nn.Parameter(torch.randn(1, 4, 80, generator=g))}
    a = MSDiffusionAdapter.from_state_dict(nested, "ms_adapter.bin")
    b = MSDiffusionAdapter.from_state_dict(ms_flat(nested), "ms_adapter.safetensors")
    assert a.spec == b.spec
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert split_state_dict({"image_proj.latents": torch.zeros(1)}) is None      # IP-Adapter-Plus: not ours
    assert split_state_dict({"ip_adapter": {}, "image_proj": {}}) is None


@pytest.mark.parametrize("damage,message", [
    (lambda n: n.pop("dummy_image_tokens"), "dummy_image_tokens"),
    (lambda n: n["image_proj"].pop("attention_norm.weight"), "attention_norm.weight"),
    (lambda n: n["image_proj"].update(latents=n["image_proj"].pop("grounding_latents")), "IP-Adapter-Plus resampler"),
    (lambda n: n["ms_adapter"].update({"5.to_k_ip.weight": n["ms_adapter"].pop("3.to_k_ip.weight")}), "layer"),
    (lambda n: n["ms_adapter"].update({"1.to_k_ip.weight": torch.zeros(64, 81)}), "equal shape"),
    (lambda n: n["image_proj"].update({"proj_out.weight": torch.zeros(96, 128)}), "proj_out"),
    (lambda n: n["image_proj"].update({"norm_out.weight": torch.full((80,), float("nan"))}), "NaN"),
    (lambda n: n["ms_adapter"].update({"when": "2020"}), "unexpected entry"),
])
def test_damaged_files_are_refused_with_the_name(damage, message):
    g = torch.Generator().manual_seed(1)
    nested = {"image_proj": ms_image_proj(g, 128, 1, 2, 16, 48, 32, 80), "ms_adapter": ms_layers(g, {1: 64, 3: 128}, 80),
              "dummy_image_tokens": torch.randn(1, 4, 80, generator=g)}
    damage(nested)
    with pytest.raises(SubjectError, match=message) as info:
        MSDiffusionAdapter.from_state_dict(nested, "my_ms.bin")
    assert "my_ms.bin" in str(info.value)


def test_sdxl_numbering_is_ip_adapters():
    """MS-Diffusion numbers its processors as IP-Adapter SDXL does: diffusers' order (down, up, then mid),
    attn1 even, attn2 odd. On SDXL's ComfyUI keys that is input 4/5, 7/8, output 0..5, then middle 0."""
    keys = [("input", b, i) for b in (4, 5) for i in range(2)] + [("input", b, i) for b in (7, 8) for i in range(10)] + \
           [("output", b, i) for b in (0, 1, 2) for i in range(10)] + [("output", b, i) for b in (3, 4, 5) for i in range(2)] + \
           [("middle", 0, i) for i in range(10)]
    numbers = ip_layer_numbers(keys)
    assert numbers[("input", 4, 0)] == 1 and numbers[("input", 5, 1)] == 7 and numbers[("input", 7, 0)] == 9
    assert numbers[("input", 8, 9)] == 47 and numbers[("output", 0, 0)] == 49 and numbers[("output", 2, 9)] == 107
    assert numbers[("output", 3, 0)] == 109 and numbers[("output", 5, 1)] == 119
    assert numbers[("middle", 0, 0)] == 121 and numbers[("middle", 0, 9)] == 139
    widths = sdxl_layer_widths()
    width_of = {key: (640 if key[0] == "input" and key[1] in (4, 5) or key[0] == "output" and key[1] in (3, 4, 5) else 1280)
                for key in keys}
    assert all(widths[numbers[key]] == width_of[key] for key in keys)


# ---- the resampler ---------------------------------------------------------------------------------------

def test_fourier_embedding_is_the_official_ordering():
    boxes = torch.tensor([[0.0, 0.25, 0.4, 0.75], [0.6, 0.1, 1.0, 0.9]])
    torch.testing.assert_close(fourier_embedding(boxes).double(), official_fourier(boxes), atol=1e-5, rtol=1e-5)
    assert fourier_embedding(boxes).shape == (2, 64)


def test_full_width_resampler_matches_a_dense_reference():
    """At the released file's widths: dim 1280, 20 heads, depth 4, ViT-bigG features [257, 1664], CLIP-L
    phrase 768, SDXL context 2048; attention_norm included."""
    g = torch.Generator().manual_seed(2)
    sd = ms_image_proj(g, **{k: MS_REAL[k] for k in ("dim", "depth", "heads", "queries", "feature_dim", "phrase_dim",
                                                      "context")})
    nested = {"image_proj": sd, "ms_adapter": ms_layers(g, {1: 64}, 2048), "dummy_image_tokens": torch.randn(1, 4, 2048)}
    module = MSDiffusionAdapter.from_state_dict(nested, "ms_adapter.bin")
    features = torch.randn(2, 257, 1664, generator=g)
    phrase = torch.randn(2, 768, generator=g)
    boxes = torch.tensor([[0.0, 0.25, 0.4, 0.75], [0.6, 0.25, 1.0, 0.75]])
    with torch.inference_mode():
        got = module.tokens(features, phrase, boxes)
    assert got.shape == (2, 16, 2048)
    expected = reference_resampler(sd, features, phrase, boxes, heads=20)
    torch.testing.assert_close(got.double(), expected, atol=2e-4, rtol=1e-3)
    # attention_norm is applied: without it the tokens differ
    sd_without = dict(sd, **{"attention_norm.weight": torch.ones(1280), "attention_norm.bias": torch.zeros(1280)})
    assert not torch.allclose(reference_resampler(sd_without, features[:1], phrase[:1], boxes[:1], 20), expected[:1], atol=1e-2)
    # the box changes the tokens (grounding queries), as does the phrase
    with torch.inference_mode():
        moved = module.tokens(features[:1], phrase[:1], torch.tensor([[0.5, 0.0, 1.0, 0.5]]))
    assert not torch.allclose(moved, got[:1], atol=1e-3)


# ---- boxes and attention ----------------------------------------------------------------------------------

@pytest.mark.parametrize("height,width", [(8, 8), (6, 10), (5, 3), (16, 24)])
def test_box_cells_follow_the_official_floor_ceil_rule(height, width):
    boxes = [(0.0, 0.25, 0.4, 0.75), (0.6, 0.25, 1.0, 0.75), (0.3, 0.0, 0.3 + 0.05, 1.0), (0.05, 0.2, 0.45, 0.9)]
    expected = official_box_masks(boxes, height, width).bool()
    got = torch.stack([box_cells(b, height, width) for b in boxes])
    assert torch.equal(got, expected)
    if height == width:       # the official code's own square grid: int(sqrt(L)) per side
        side = int((height * width) ** 0.5)
        assert side == height


def test_box_cells_count_a_boundary_once():
    # 0.3 * 10 is 3.0000000000000004 in floating point: the box [0, 0.3] covers 3 of 10 columns, not 4
    assert int(box_cells((0.0, 0.0, 0.3, 1.0), 1, 10).sum()) == 3


def test_region_mask_cells():
    region = torch.zeros(40, 60)
    region[10:30, 30:60] = 1.0
    cells = subject_cells([(None, region)], 4, 6).reshape(4, 6)
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[1:3, 3:] = True
    assert torch.equal(cells, expected)


def test_bias_opens_dummy_columns_on_background_only():
    cells = torch.stack([box_cells((0, 0, 0.5, 1), 2, 4), box_cells((0.25, 0, 1, 0.5), 2, 4)])
    bias = attention_bias(cells, 2, NUM_DUMMY_TOKENS)
    assert bias.shape == (8, 4 + 4)
    background = ~cells.any(0)
    assert torch.equal(bias[:, :4] == 0, background[:, None].expand(-1, 4))
    assert torch.equal(bias[:, 4:6] == 0, cells[0][:, None].expand(-1, 2))
    assert set(bias.unique().tolist()) == {0.0, MASK_BIAS}
    assert torch.equal(column_weights([0.5, 2.0], 2, 4), torch.tensor([1, 1, 1, 1, 0.5, 0.5, 2.0, 2.0]))


@pytest.mark.parametrize("height,width", [(8, 8), (6, 10)])
def test_joint_attention_matches_the_official_processor(height, width):
    g = torch.Generator().manual_seed(3)
    heads, d, tokens, subjects = 4, 16, 16, 3
    boxes = [(0.0, 0.25, 0.4, 0.75), (0.3, 0.25, 1.0, 0.75), (0.7, 0.0, 1.0, 0.2)]     # 1 and 2 overlap
    q = torch.randn(2, height * width, heads * d, generator=g)
    keys = torch.randn(NUM_DUMMY_TOKENS + subjects * tokens, heads * d, generator=g)
    values = torch.randn(NUM_DUMMY_TOKENS + subjects * tokens, heads * d, generator=g)
    scales = [DEFAULT_SCALE, 0.8 * DEFAULT_SCALE, 1.0]
    cells = subject_cells([(b, None) for b in boxes], height, width)
    bias = attention_bias(cells, tokens, NUM_DUMMY_TOKENS)
    weighted = values * column_weights(scales, tokens, NUM_DUMMY_TOKENS)[:, None]
    got = joint_masked_attention(q, keys, weighted, bias, cells.any(0).float(), heads)
    expected = official_ip_attention(q, keys, values, boxes, height, width, heads, tokens, NUM_DUMMY_TOKENS, scales)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-4)
    background = ~cells.any(0)
    assert torch.equal(got[:, background], torch.zeros_like(got[:, background]))
    # only the rows inside some box computed: the same term
    rows = torch.nonzero(cells.any(0)).flatten()
    torch.testing.assert_close(joint_masked_attention(q, keys, weighted, bias, cells.any(0).float(), heads, rows=rows), got)
    # fp32 exp(-10000) is 0: rows inside a box never see the dummy tokens, nor another subject's tokens
    only_first = cells[0] & ~cells[1] & ~cells[2]
    changed = values.clone()
    changed[:NUM_DUMMY_TOKENS] += 5
    changed[NUM_DUMMY_TOKENS + tokens:] += 5
    again = joint_masked_attention(q, keys, changed * column_weights(scales, tokens, NUM_DUMMY_TOKENS)[:, None], bias,
                                   cells.any(0).float(), heads)
    assert torch.equal(again[:, only_first], got[:, only_first])
    assert not torch.allclose(again[:, cells[1]], got[:, cells[1]])


def test_joint_attention_in_half_precision_with_float32_scores():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, 24, 64, generator=g)
    keys, values = torch.randn(20, 64, generator=g), torch.randn(20, 64, generator=g)
    cells = box_cells((0.0, 0.0, 0.5, 1.0), 4, 6)[None]
    bias = attention_bias(cells, 16, 4)
    full = joint_masked_attention(q, keys, values, bias, cells.any(0).float(), 4)
    half = joint_masked_attention(q.bfloat16(), keys.bfloat16(), values.bfloat16(), bias, cells.any(0).float(), 4,
                                  precision=torch.float32)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), full, atol=5e-2, rtol=5e-2)


# ---- the reference image ----------------------------------------------------------------------------------

def test_reference_crop_is_the_subject_on_black_squashed_to_a_square():
    image = torch.rand(40, 60, 3, generator=torch.Generator().manual_seed(5)) * 0.5 + 0.5
    mask = torch.zeros(40, 60)
    mask[10:30, 20:50] = 1.0
    mask[10:12, 20:22] = 0.0                          # a background pixel inside the box: black
    crop = ms_reference_crop(image, mask, side=32)
    assert crop.shape == (1, 32, 32, 3)
    assert crop[0, 0, 0].max() < 0.05                 # the masked-out corner is black
    assert crop[0, 16, 16].min() > 0.4                # the subject stays
    # no mask: the whole photo, squashed
    whole = ms_reference_crop(image, None, side=16)
    assert whole.shape == (1, 16, 16, 3) and whole.min() > 0.45
    with pytest.raises(SubjectError, match="subject_mask is empty"):
        ms_reference_crop(image, torch.zeros(40, 60))
