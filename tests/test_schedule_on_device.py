"""Schedule windows decided on the device (issue 13): with the sampler's sigma as a tensor, a plan carries
the windows and applies them where the tensor is, never reading it on the host; the result is the
host-side plan's, bit for bit. Core test (torch only), runs everywhere."""

import pytest
import torch

from core.concept_stack import ConceptStack
from core.gate_settings import GateSettings
from test_concept_stack import D, concepts, layers, run

PERCENT_TO_SIGMA = staticmethod(lambda p: 10.0 * (1.0 - p))          # 0% -> sigma 10, 100% -> 0


class Sampling:
    percent_to_sigma = PERCENT_TO_SIGMA


class Executor:
    """What ComfyUI's APPLY_MODEL wrapper executor offers: class_obj.model_sampling, and the call."""

    def __init__(self, body):
        self.class_obj = type("Model", (), {"model_sampling": Sampling()})()
        self.body = body

    def __call__(self, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        return self.body(c_crossattn)


def forward(stack, settings, sigma, context, superclass=None, device="cpu"):
    mods = layers()
    executor = Executor(lambda ctx: run(stack, mods, ctx))
    t = torch.full((2,), sigma, device=device)
    extra = {} if superclass is None else {"perfusion_superclass_context": superclass}
    return stack.apply_model_wrapper(executor, None, t, c_crossattn=context,
                                     transformer_options={"perfusion": settings}, **extra)


def host_side(stack, settings, sigma, context, superclass=None):
    """The same forward with the plan decided on the host (the number sigma)."""
    mods = layers()
    plan = stack.plan(settings, sigma=sigma, percent_to_sigma=Sampling.percent_to_sigma)
    if plan is None:
        return {p: (k(context), v(context)) for p, (k, v) in mods.items()}
    previous = stack.begin_forward(plan, superclass)
    try:
        return run(stack, mods, context)
    finally:
        stack.end_forward(previous)


@pytest.mark.parametrize("key_lock", ["local", "global"])
@pytest.mark.parametrize("sigma", [9.5, 7.0, 4.0, 1.0])
def test_device_windows_give_the_host_plan_bit_for_bit(key_lock, sigma):
    cs, _ = concepts(2)
    settings = {"t0": GateSettings(start_percent=0.2, end_percent=0.5, key_lock=key_lock),
                "t1": GateSettings(start_percent=0.5, key_lock=key_lock)}
    if sigma == 1.0:
        settings["t1"] = GateSettings(start_percent=0.5, end_percent=0.8, key_lock=key_lock)   # both off at 1.0
    g = torch.Generator().manual_seed(3)
    context, superclass = torch.randn(2, 5, D, generator=g), torch.randn(2, 5, D, generator=g)
    stack = ConceptStack(cs, {})
    on_device = forward(stack, settings, sigma, context, superclass)
    on_host = host_side(ConceptStack(cs, {}), settings, sigma, context, superclass)
    for path in on_host:
        for a, b in zip(on_device[path], on_host[path]):
            assert torch.equal(a, b), (path, sigma, key_lock)
    assert stack.plan(settings, sigma=torch.tensor([sigma]), percent_to_sigma=Sampling.percent_to_sigma).scheduled


def test_a_scheduled_forward_never_reads_sigma_on_the_host():
    """On the meta device a host read raises: the whole scheduled forward runs there."""
    cs, _ = concepts(2)
    settings = {"t0": GateSettings(start_percent=0.2, end_percent=0.5, key_lock="global"), "t1": GateSettings()}
    stack = ConceptStack(cs, {})
    meta = torch.device("meta")
    mods = {p: (k.to(meta), v.to(meta)) for p, (k, v) in layers().items()}
    executor = Executor(lambda ctx: run(stack, mods, ctx))
    context = torch.randn(2, 5, D, device=meta)
    out = stack.apply_model_wrapper(executor, None, torch.full((2,), 4.0, device=meta), c_crossattn=context,
                                    transformer_options={"perfusion": settings},
                                    perfusion_superclass_context=torch.randn(2, 5, D, device=meta))
    assert all(t.device == meta for pair in out.values() for t in pair)
    with pytest.raises(RuntimeError, match="meta"):
        float(torch.ones((), device=meta))          # the premise: a host read of a meta tensor raises


def test_release_drops_every_device_copy():
    cs, _ = concepts(2)
    stack = ConceptStack(cs, {})
    meta = torch.device("meta")
    mods = {p: (k.to(meta), v.to(meta)) for p, (k, v) in layers().items()}
    settings = {"t0": GateSettings(start_percent=0.2)}
    stack.apply_model_wrapper(Executor(lambda ctx: run(stack, mods, ctx)), None, torch.full((2,), 4.0, device=meta),
                              c_crossattn=torch.randn(2, 5, D, device=meta), transformer_options={"perfusion": settings})
    assert any(key[-1] == meta for key in stack._bases) and stack._targets
    stack.release()
    assert all(key[-1] == torch.device("cpu") for key in stack._bases) and not stack._targets
    assert all(not plan._on_device for plan in stack._plans.values())
