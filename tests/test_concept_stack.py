"""ConceptStack: the per-layer forwards, the per-forward cache, plans, schedules and key locks."""

import pytest
import torch

from concept_factory import make_concept
from core.concept_file import Concept
from core.concept_stack import ConceptStack, SUPER_CONTEXT_KEY
from core.errors import ConceptError
from core.gate_settings import GateSettings
from test_gated_edit import reference

D = 32
LAYERS = [("input_blocks.1.1.transformer_blocks.0.attn2", 24), ("middle_block.1.transformer_blocks.0.attn2", 40)]
TOWERS = {"clip_l": D}


def concepts(n):
    from concept_factory import random_covariance
    C = random_covariance(D, 7)
    return [make_concept(Concept, LAYERS, TOWERS, trigger=f"t{k}", seed=k, covariance=C) for k in range(n)], C


def layers(seed=0):
    torch.manual_seed(seed)
    return {p: (torch.nn.Linear(D, w, bias=False), torch.nn.Linear(D, w, bias=False)) for p, w in LAYERS}


def run(stack, mods, context):
    out = {}
    for path, (k, v) in mods.items():
        out[path] = (stack.key_forward(path, k.forward, context), stack.value_forward(path, v.forward, context))
    return out


@pytest.mark.parametrize("n", [1, 2])
def test_forwards_match_the_dense_reference(n):
    cs, C = concepts(n)
    settings = {c.trigger: GateSettings(strength=1.0 - 0.3 * k, beta=0.6 + 0.05 * k) for k, c in enumerate(cs)}
    stack = ConceptStack(cs, settings)
    mods = layers()
    context = torch.randn(2, 9, D)
    context[0, 2] = cs[0].i_star
    out = run(stack, mods, context)
    I = torch.stack([c.i_star for c in cs]).double()
    lam = torch.tensor([settings[c.trigger].strength for c in cs], dtype=torch.float64)
    beta = torch.tensor([settings[c.trigger].beta for c in cs], dtype=torch.float64)
    tau = torch.tensor([settings[c.trigger].tau for c in cs], dtype=torch.float64)
    for path, (k, v) in mods.items():
        Wk, Wv = k.weight.double(), v.weight.double()
        OK = torch.stack([c.superclass_encoding for c in cs]).double() @ Wk.T
        OV = torch.stack([c.v_targets[path] for c in cs]).double()
        assert torch.allclose(out[path][0].double(), reference(context.double(), Wk, C, I, OK, lam, beta, tau), atol=1e-4)
        assert torch.allclose(out[path][1].double(), reference(context.double(), Wv, C, I, OV, lam, beta, tau), atol=1e-4)


def test_strength_zero_calls_the_layer_unchanged():
    cs, _ = concepts(2)
    stack = ConceptStack(cs, {c.trigger: GateSettings(strength=0.0) for c in cs})
    assert stack.default_plan is None
    mods = layers()
    context = torch.randn(2, 9, D)
    for path, (k, v) in mods.items():
        assert torch.equal(stack.key_forward(path, k.forward, context), k(context))
        assert torch.equal(stack.value_forward(path, v.forward, context), v(context))


def test_an_off_concept_stays_in_the_joint_projection():
    cs, C = concepts(2)
    mods, context = layers(), torch.randn(1, 5, D)
    context[0, 1] = cs[1].i_star
    def values(strength):
        stack = ConceptStack(cs, {"t0": GateSettings(), "t1": GateSettings(strength=strength)})
        return run(stack, mods, context)
    off, nearly_off = values(0.0), values(1e-6)
    I = torch.stack([c.i_star for c in cs]).double()
    for path, (k, v) in mods.items():
        OV = torch.stack([c.v_targets[path] for c in cs]).double()
        lam, beta, tau = [torch.tensor(x, dtype=torch.float64) for x in ([1.0, 0.0], [0.7, 0.7], [0.15, 0.15])]
        ref = reference(context.double(), v.weight.double(), C, I, OV, lam, beta, tau)
        assert torch.allclose(off[path][1].double(), ref, atol=1e-4)                 # the formula, lambda_2 = 0
        assert torch.allclose(off[path][1], nearly_off[path][1], atol=1e-4)          # no jump at 0


def test_inputs_are_edited_once_per_forward_for_every_layer(monkeypatch):
    import core.concept_stack as module
    calls = []
    real = module.edit_inputs
    monkeypatch.setattr(module, "edit_inputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    cs, _ = concepts(1)
    stack = ConceptStack(cs, {"t0": GateSettings()})
    mods = layers()
    context = torch.randn(2, 9, D)
    previous = stack.begin_forward(stack.default_plan)
    run(stack, mods, context)
    stack.end_forward(previous)
    assert len(calls) == 1
    run(stack, mods, torch.randn(2, 9, D))
    assert len(calls) == 2


def test_context_of_another_width_passes_through():
    cs, _ = concepts(1)
    stack = ConceptStack(cs, {"t0": GateSettings()})
    lin = torch.nn.Linear(D + 1, 8, bias=False)
    x = torch.randn(1, 3, D + 1)
    assert torch.equal(stack.key_forward(LAYERS[0][0], lin.forward, x), lin(x))


def test_plans_follow_the_schedule_and_are_cached():
    cs, _ = concepts(2)
    stack = ConceptStack(cs, {})
    percent_to_sigma = lambda p: 10.0 * (1.0 - p)          # 0% -> sigma 10, 100% -> 0
    settings = {"t0": GateSettings(start_percent=0.0, end_percent=0.5), "t1": GateSettings(start_percent=0.5)}
    early = stack.plan(settings, sigma=8.0, percent_to_sigma=percent_to_sigma)
    late = stack.plan(settings, sigma=2.0, percent_to_sigma=percent_to_sigma)
    assert early.parameters("cpu")[0].tolist() == [1.0, 0.0] and late.parameters("cpu")[0].tolist() == [0.0, 1.0]
    assert stack.plan(settings, sigma=8.0, percent_to_sigma=percent_to_sigma) is early
    assert stack.plan({"t0": GateSettings(strength=0.0), "t1": GateSettings(strength=0.0)}) is None


def test_apply_model_wrapper_sets_the_plan_and_takes_the_superclass_context():
    cs, C = concepts(1)
    stack = ConceptStack(cs, {"t0": GateSettings()})
    mods = layers()
    context, superclass_context = torch.randn(2, 9, D), torch.randn(2, 9, D)

    class Executor:
        class_obj = None

        def __call__(self, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
            assert SUPER_CONTEXT_KEY not in kwargs                      # never reaches the UNet
            return run(stack, mods, c_crossattn)

    options = {"perfusion": {"t0": GateSettings(key_lock="global", beta=0.5)}}
    out = stack.apply_model_wrapper(Executor(), None, torch.tensor([1.0]), None, context, None, options,
                                    **{SUPER_CONTEXT_KEY: superclass_context})
    I = cs[0].i_star[None].double()
    one = torch.ones(1, dtype=torch.float64)
    for path, (k, v) in mods.items():
        Wk, Wv = k.weight.double(), v.weight.double()
        OK = cs[0].superclass_encoding[None].double() @ Wk.T
        key_ref = reference(superclass_context.double(), Wk, C, I, OK, one, 0.5 * one, 0.15 * one)
        value_ref = reference(context.double(), Wv, C, I, cs[0].v_targets[path][None].double(), one, 0.5 * one, 0.15 * one)
        assert torch.allclose(out[path][0].double(), key_ref, atol=1e-4)
        assert torch.allclose(out[path][1].double(), value_ref, atol=1e-4)
    assert stack._current is None and stack._cached is None                 # nothing kept after the forward


def test_duplicate_triggers_are_refused():
    cs, _ = concepts(1)
    with pytest.raises(ConceptError, match="same trigger"):
        ConceptStack([cs[0], cs[0]], {})
