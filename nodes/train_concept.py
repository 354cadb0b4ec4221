"""Node "Train Perfusion Concept" (PerfusionTrainConcept): trains a concept inside the graph.

ComfyUI runs nodes under torch.inference_mode() (execution.py) and its CLIPLayer adds residuals in
place (``x += ...`` in comfy/clip_model.py), so training runs in inference_mode(False) on a clone of
the model and of the CLIP: their frozen weights are swapped once for ordinary tensors of the same
values (inference tensors cannot be saved for backward), and the CLIP clone's layers get out-of-place
residuals.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import re

import numpy
import torch
import torch.utils.checkpoint

import comfy.clip_model
import comfy.model_management
import comfy.model_sampling
import comfy.patcher_extension
import comfy.utils

from ..core import training
from ..core.concept_file import write_concept
from ..core.concept_text import TOWERS, ConceptTokenizer
from ..core.covariance import invert
from ..core.errors import ConceptError
from ..core.gate_settings import GateSettings
from . import model_folder
from .clip_patch import add_concept_to_clip, encode_prompts
from . import covariance_cache
from .covariance_cache import covariance_for
from .model_patch import INJECTION_KEY, Injection, apply_concept, concept_stack, cross_attention_layers, model_family

log = logging.getLogger("perfusion")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,120}$")
INFERENCE_BETA, INFERENCE_TAU = 0.7, 0.15


def concept_filename(name: str) -> str:
    base = (name or "").strip()
    if base.lower().endswith(".safetensors"):
        base = base[:-len(".safetensors")]
    if not _NAME.match(base) or ".." in base:
        raise ConceptError(f"filename {name!r}: use letters, digits, spaces, '-', '_' and '.' only "
                           "(no folders, no '..'), e.g. 'my_teddy'")
    return base + ".safetensors"


def _deinference_(module):
    """Swap inference-tensor parameters/buffers for ordinary tensors of the same values (once)."""
    for name, p in list(module.named_parameters()):
        if p.is_inference():
            comfy.utils.set_attr_param(module, name, p.detach().clone())
    for name, b in list(module.named_buffers()):
        if b.is_inference():
            comfy.utils.set_attr(module, name, b.detach().clone())


class _Frozen:
    """Records every weight's requires_grad flag by name; ``freeze`` turns them off for training,
    ``restore`` puts the recorded flags back on whatever parameter holds each name by then
    (_deinference_ replaces parameter objects, and inference tensors accept no flag changes)."""

    def __init__(self, *modules):
        self.flags = [(m, {n: p.requires_grad for n, p in m.named_parameters()}) for m in modules]

    def freeze(self):
        for module, _ in self.flags:
            for p in module.parameters():
                if p.requires_grad and not p.is_inference():
                    p.requires_grad_(False)

    def restore(self):
        for module, flags in self.flags:
            for name, p in module.named_parameters():
                wanted = flags.get(name)
                if wanted is not None and p.requires_grad != wanted and not p.is_inference():
                    p.requires_grad_(wanted)


def _forward_injection(targets, make_forward):
    """A PatcherInjection that gives each module of ``targets(patcher)`` the instance forward
    ``make_forward(module)``; ComfyUI removes them again on eject (only this clone is affected)."""
    installed = []

    def inject(patcher):
        for module in targets(patcher):
            if "forward" not in module.__dict__:
                module.forward = make_forward(module)
                installed.append(module)

    def eject(patcher):
        for module in installed:
            module.__dict__.pop("forward", None)
        installed.clear()
    return comfy.patcher_extension.PatcherInjection(inject=inject, eject=eject)


def _out_of_place_residuals(layer):
    """CLIPLayer does `x += ...`, which breaks autograd; the training CLIP adds out of place."""
    def forward(x, mask=None, optimized_attention=None):
        x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
        return x + layer.mlp(layer.layer_norm2(x))
    return forward


def _clip_layers(patcher):
    return [m for m in patcher.model.modules() if isinstance(m, comfy.clip_model.CLIPLayer)]


def _unet_blocks(patcher):
    unet = patcher.model.diffusion_model
    return list(unet.input_blocks) + [unet.middle_block] + list(unet.output_blocks)


def _checkpointed(block):
    """Gradient checkpointing of one UNet block. The edit's per-forward inputs are computed before the
    UNet runs and stay cached until after backward, so a recomputed block finds the same tensors."""
    return functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False)


def _towers(tokenizer):
    return [t for t in TOWERS if getattr(tokenizer, t, None) is not None]


def _word_ids(sub, word):
    return sub.tokenizer(word)["input_ids"][sub.tokens_start:-1 if sub.end_token is not None else None]


def _superclass_token(tokenizer, tower, superclass):
    """The superclass's one token id. Keys lock to one token's encoding (spec 4.4; both reference
    implementations assert it), and global key locking puts that token in the trigger's place, so a
    several-token superclass would lock to something global locking cannot reproduce."""
    sub = getattr(tokenizer, tower)
    ids = _word_ids(sub, superclass)
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise ConceptError(f"superclass {superclass!r}: the {tower} tokenizer gives no tokens for it; "
                           "use a word for what the subject is, e.g. 'dog' or 'toy'")
    words = [w for w in re.split(r"[\s,]+", superclass) if w and len(_word_ids(sub, w)) == 1]
    hint = " or ".join(f"'{w}'" for w in words[-2:]) or "'dog', 'toy' or 'cup'"
    raise ConceptError(f"superclass {superclass!r} is {len(ids)} tokens for the text encoder; Perfusion locks "
                       f"the keys to ONE token, so use a one-token word for what the subject is, e.g. {hint}")


def _validate(images, masks, trigger, superclass, model):
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[0] == 0:
        raise ConceptError("images: no images; connect 1 to 20 photos of the subject (an IMAGE batch)")
    if not torch.isfinite(images).all():
        raise ConceptError("images: some pixels are NaN or infinite; check the node that made the images")
    if masks is not None:
        if masks.ndim == 2:
            masks = masks[None]
        if masks.shape[0] != images.shape[0]:
            raise ConceptError(f"masks: {masks.shape[0]} masks for {images.shape[0]} images; give one mask per image "
                               "(or none)")
        if masks.shape[-2:] != images.shape[1:3]:
            raise ConceptError(f"masks: {masks.shape[-1]}x{masks.shape[-2]} pixels, the images are "
                               f"{images.shape[2]}x{images.shape[1]}; give masks of the images' size")
        empty = [k for k in range(masks.shape[0]) if not masks[k].float().sum() > 0]
        if empty:
            raise ConceptError(f"masks: mask {empty[0] + 1} is empty (all black); it must cover the subject")
    if not trigger.strip() or any(c.isspace() for c in trigger.strip()):
        raise ConceptError(f"trigger {trigger!r}: expected one word, e.g. 'sks'")
    if not superclass.strip():
        raise ConceptError("superclass: expected what the subject is, as one word, e.g. 'dog' or 'teddy'")
    if concept_stack(model) is not None:
        raise ConceptError("model: it already carries Perfusion concepts; train on the checkpoint's model "
                           "(before any 'Load Rank-1 Concept')")
    family, _ = model_family(model)
    if family == "unknown":
        raise ConceptError("model: Perfusion trains on SD1.x, SD2.x or SDXL models only")
    return masks, family


@torch.no_grad()
def _prepare_images(vae, model, images, masks, resolution):
    """Latents (and flipped latents) and latent-size masks, encoded once before training."""
    pixels = images[..., :3].movedim(-1, 1).float()
    pixels = comfy.utils.common_upscale(pixels, resolution, resolution, "bicubic", "center").clamp(0, 1)
    pixels = pixels.movedim(1, -1)
    latents = model.model.process_latent_in(vae.encode(pixels)).float()
    flipped = model.model.process_latent_in(vae.encode(pixels.flip(2))).float()
    latent_masks = None
    if masks is not None:
        m = comfy.utils.common_upscale(masks[:, None].float(), resolution, resolution, "bilinear", "center")
        latent_masks = torch.nn.functional.interpolate(m, size=latents.shape[-2:], mode="area").clamp(0, 1)
    return latents, flipped, latent_masks


def _loss_curve(losses, steps):
    from PIL import Image, ImageDraw
    width, height, pad = 640, 320, 40
    img = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(img)
    draw.rectangle([pad, pad // 2, width - pad // 2, height - pad], outline=(90, 90, 100))
    if losses:
        smooth, s = [], losses[0]
        for v in losses:
            s = 0.9 * s + 0.1 * v
            smooth.append(s)
        lo, hi = min(losses), max(losses)
        span = (hi - lo) or 1.0
        def xy(i, v):
            return (pad + (width - 1.5 * pad) * i / max(1, len(losses) - 1),
                    height - pad - (height - 1.5 * pad) * (v - lo) / span)
        draw.line([xy(i, v) for i, v in enumerate(losses)], fill=(90, 120, 160), width=1)
        draw.line([xy(i, v) for i, v in enumerate(smooth)], fill=(250, 180, 60), width=2)
        draw.text((pad, height - pad + 8), f"step 1 .. {len(losses)} of {steps}", fill=(200, 200, 200))
        draw.text((pad + 4, pad // 2 + 4), f"loss {hi:.4g}", fill=(200, 200, 200))
        draw.text((pad + 4, height - pad - 14), f"loss {lo:.4g}", fill=(200, 200, 200))
    return torch.from_numpy(numpy.asarray(img).astype("float32") / 255.0)[None]


def _report(step, steps, loss):
    """A `perfusion.train` websocket event for the web extension: the running node's step and loss."""
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None:
        server.send_sync("perfusion.train", {"node": server.last_node_id, "step": step, "steps": steps, "loss": loss},
                         server.client_id)


def train_concept(model, clip, vae, images, trigger, superclass, steps=400, batch_size=4, grad_accumulation=4,
                  lr_embedding=0.006, lr_values=0.03, train_beta=0.75, train_tau=0.1, resolution=512, flip=True,
                  masked_loss=True, seed=0, filename="my_concept", masks=None, progress=True, on_step=None,
                  gradient_checkpointing=False, train_values=True):
    """Trains and saves a concept; returns (path, trained concept, per-step losses). Writes nothing
    unless it finishes. ``train_values=False`` trains the token embedding alone with the K/V edit off
    (textual inversion on the same code path: the toy-world benchmark's baseline; apply such a concept
    at strength 0)."""
    trigger, superclass = trigger.strip(), superclass.strip()
    masks, family = _validate(images, masks, trigger, superclass, model)
    GateSettings(beta=train_beta, tau=train_tau).validated("Train Perfusion Concept")
    path = os.path.join(model_folder.output_folder(), concept_filename(filename))
    if os.path.exists(path):
        raise ConceptError(f"filename: '{os.path.basename(path)}' already exists in {os.path.dirname(path)}; "
                           "choose another name (files are never overwritten)")
    base_tokenizer = getattr(clip.tokenizer, "inner", clip.tokenizer)
    text_model = getattr(clip.cond_stage_model, "inner", clip.cond_stage_model)
    towers = _towers(base_tokenizer)
    superclass_ids = {tower: _superclass_token(base_tokenizer, tower, superclass) for tower in towers}
    embeddings = {t: getattr(text_model, t).transformer.get_input_embeddings().weight[superclass_ids[t]].detach().float().clone()
                  for t in towers}
    # Refuses a trigger that is several tokens, before any work is done.
    ConceptTokenizer(base_tokenizer, [(trigger, superclass, embeddings, f"trigger {trigger!r}")])

    encoder = covariance_for(clip, show_progress=progress)
    G = invert(encoder.covariance, f"the covariance of {covariance_cache.encoder_name(clip)}")
    layers = cross_attention_layers(model)
    generator = torch.Generator().manual_seed(int(seed))
    device = comfy.model_management.get_torch_device()
    use_mask = masked_loss and masks is not None
    bar = comfy.utils.ProgressBar(steps) if progress else None
    losses = []

    with torch.inference_mode(False), torch.enable_grad():
        latents, flipped, latent_masks = _prepare_images(vae, model, images, masks if use_mask else None, resolution)
        trainable = training.TrainableConcept(trigger, superclass, family, embeddings, G,
                                              {p: m.to_v.out_features for p, m in layers.items()}).to(device)
        train_clip = clip.clone()
        train_clip.cond_stage_model = text_model
        train_clip.tokenizer = ConceptTokenizer(base_tokenizer, [(trigger, superclass, dict(trainable.embeddings), "trained concept")])
        train_clip.patcher.set_injections("perfusion_autograd", [_forward_injection(_clip_layers, _out_of_place_residuals)])
        train_model = model.clone()
        train_model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, INJECTION_KEY)
        compute_dtype = _training_compute_dtype(model, device)
        if compute_dtype is not None:
            train_model.set_model_compute_dtype(compute_dtype)
        if gradient_checkpointing:
            train_model.set_injections("perfusion_checkpointing", [_forward_injection(_unet_blocks, _checkpointed)])
        frozen = _Frozen(train_model.model, train_clip.patcher.model)
        stack, optimizer = None, None
        key0 = towers[0][-1]
        try:
            comfy.model_management.load_models_gpu([train_model, train_clip.patcher])
            _deinference_(train_clip.patcher.model)
            _deinference_(train_model.model)
            frozen.freeze()
            model_sampling = train_model.get_model_object("model_sampling")
            v_prediction = isinstance(model_sampling, comfy.model_sampling.V_PREDICTION)
            sigma_data = float(getattr(model_sampling, "sigma_data", 1.0))
            per_prompt_pooled = bool(train_model.model.adm_channels)
            for step in range(steps):
                step_loss = 0.0
                for _ in range(grad_accumulation):
                    comfy.model_management.throw_exception_if_processing_interrupted()
                    pick = torch.randint(latents.shape[0], (batch_size,), generator=generator)
                    mirror = (torch.rand(batch_size, generator=generator) < 0.5) if flip else torch.zeros(batch_size, dtype=torch.bool)
                    x0 = torch.where(mirror[:, None, None, None], flipped[pick], latents[pick])
                    mask = None
                    if use_mask:
                        mask = latent_masks[pick]
                        mask = torch.where(mirror[:, None, None, None], mask.flip(-1), mask)
                    templates = [training.TEMPLATES[int(k)] for k in torch.randint(len(training.TEMPLATES), (batch_size,), generator=generator)]
                    sigma = torch.tensor([model_sampling.percent_to_sigma(float(u))
                                          for u in torch.rand(batch_size, generator=generator).clamp(1e-4, 1 - 1e-4)])
                    noise = torch.randn(x0.shape, generator=generator)

                    # Both models in memory before the text encoder runs: loading the UNet later could
                    # move text-encoder weights that this step's graph still needs.
                    comfy.model_management.load_models_gpu([train_model, train_clip.patcher])
                    _deinference_(train_clip.patcher.model)
                    _deinference_(train_model.model)
                    tokens = [train_clip.tokenize(t.format(trigger)) for t in templates]
                    positions = [next(k for k, t in enumerate(tok[key0][0]) if torch.is_tensor(t[0])) for tok in tokens]
                    context, pooled = encode_prompts(train_clip, tokens, per_prompt_pooled)
                    concept_encoding = context[torch.arange(batch_size), positions].mean(0)
                    if not trainable.initialised:
                        with torch.no_grad():
                            super_tokens = [train_clip.tokenize(t.format(superclass)) for t in templates]
                            super_context, _ = encode_prompts(train_clip, super_tokens)
                            # local key lock: the superclass word's encoding where the trigger sits (one token, so
                            # the same position), the very token global key locking substitutes
                            e_super = super_context[torch.arange(batch_size), positions].mean(0)
                            value_outputs = [m.to_v(e_super[None].to(device, _dtype(train_model)))
                                             for m in cross_attention_layers(train_model).values()]
                        trainable.initialise(e_super.to(device), [v.float() for v in value_outputs])
                        stack = training.TrainingStack(trainable, train_beta, train_tau, 1.0 if train_values else 0.0)
                        train_model.set_injections(INJECTION_KEY, [Injection(stack)])
                        optimizer = torch.optim.AdamW(trainable.parameter_groups(lr_embedding, lr_values))
                    if not torch.isfinite(concept_encoding).all():
                        raise _diverged(step, "the trigger's encoding is no longer finite")
                    trainable.update_i_star(concept_encoding.to(device))
                    stack.refresh()
                    extra = {}
                    if per_prompt_pooled:           # SDXL: each prompt's own pooled output, with its gradient
                        extra["y"] = train_model.model.encode_adm(
                            pooled_output=pooled, width=resolution, height=resolution,
                            crop_w=0, crop_h=0, target_width=resolution, target_height=resolution).to(device)
                    xt = model_sampling.noise_scaling(sigma, noise, x0)
                    # The context in the model's dtype, so apply_model passes this very tensor to the
                    # layers; its edited inputs are computed here, outside any checkpointed block, and
                    # the cache stays until backward is done.
                    context = context.to(device=device, dtype=_dtype(train_model))
                    previous = stack.begin_forward(stack.default_plan)
                    try:
                        stack.prepare(context)
                        prediction = train_model.model.apply_model(xt.to(device), sigma.to(device), c_crossattn=context,
                                                                   transformer_options={}, **extra)
                        loss = training.masked_mse(prediction, x0.to(device),
                                                   training.objective_weight(sigma.to(device), v_prediction, sigma_data),
                                                   mask.to(device) if mask is not None else None)
                        if not torch.isfinite(loss):
                            raise _diverged(step, f"the loss is {loss.item()}")
                        (loss / grad_accumulation).backward()
                    finally:
                        stack.end_forward(previous)
                    step_loss += loss.item() / grad_accumulation
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(step_loss)
                if bar is not None:
                    bar.update_absolute(step + 1, steps)
                _report(step + 1, steps, step_loss)
                if on_step is not None:
                    on_step(step + 1, step_loss)
        finally:
            # Eject our injections and restore object patches (e.g. the fp16 model's compute dtype) on
            # the shared model now; the weights stay as loaded, ComfyUI re-checks them at the next load.
            train_model.unpatch_model(unpatch_weights=False)
            train_clip.patcher.unpatch_model(unpatch_weights=False)
            frozen.restore()

        info = {**encoder.concept_info(), "perfusion.steps": str(steps), "perfusion.train_beta": repr(float(train_beta)),
                "perfusion.train_tau": repr(float(train_tau)), "perfusion.images": str(images.shape[0]),
                "perfusion.seed": str(seed), "perfusion.train_values": str(bool(train_values)).lower(),
                "perfusion.final_loss": f"{losses[-1]:.6g}" if losses else "",
                "perfusion.date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        concept = trainable.to_concept(INFERENCE_BETA, INFERENCE_TAU, encoder.key, info)
    write_concept(path, concept)
    log.info("Perfusion: saved %s (%d steps, final loss %.4g)", path, steps, losses[-1] if losses else float("nan"))
    return path, concept, losses


def _diverged(step, what):
    return ConceptError(f"training diverged at step {step + 1} ({what}); nothing was written. "
                        "Lower lr_values / lr_embedding and try again")


def _training_compute_dtype(model, device):
    """fp16 has too little range for these gradients (most value-target gradients underflow to 0):
    an fp16 model trains with bf16 compute where the device has it, else fp32, as TrainLoraNode does."""
    dtype = model.model.manual_cast_dtype or model.model.get_dtype()
    if dtype != torch.float16:
        return None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _dtype(model):
    return model.model.manual_cast_dtype or model.model.get_dtype()


class PerfusionTrainConcept:
    DESCRIPTION = ("Trains a Perfusion concept from 1-20 photos of a subject (optionally with masks) and saves it to "
                   "models/perfusion: the trigger word's embedding and the value targets of every cross-attention "
                   "layer; keys are locked to the superclass. The outputs apply the new concept right away.")
    CATEGORY = "perfusion"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", "IMAGE")
    RETURN_NAMES = ("model", "clip", "filename", "loss_curve")
    OUTPUT_TOOLTIPS = ("The model with the new concept applied (strength 1): a sampler can follow right away.",
                       "The CLIP that knows the new trigger word: encode prompts with it.",
                       "The saved file's name in models/perfusion (for 'Load Rank-1 Concept' later).",
                       "The loss per step, as an image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The checkpoint's model (SD1.x, SD2.x or SDXL), without concepts."}),
            "clip": ("CLIP", {"tooltip": "The checkpoint's text encoder."}),
            "vae": ("VAE", {"tooltip": "The checkpoint's VAE, to encode the photos once."}),
            "images": ("IMAGE", {"tooltip": "1-20 photos of the subject (a batch)."}),
            "trigger": ("STRING", {"default": "sks", "tooltip": "The new word for your subject; one short rare word (one token), e.g. 'sks'."}),
            "superclass": ("STRING", {"default": "dog", "tooltip": "What the subject is, as ONE word that is one token, e.g. 'dog', 'teddy', 'sneaker', 'mug'. Keys are locked to it; the trigger's embedding starts from it."}),
            "steps": ("INT", {"default": 400, "min": 1, "max": 10000, "tooltip": "Optimizer steps (the paper: 400)."}),
            "batch_size": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Images per micro-batch."}),
            "grad_accumulation": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Micro-batches per step (batch 4 x 4 = the paper's 16)."}),
            "lr_embedding": ("FLOAT", {"default": 0.006, "min": 0.0, "max": 1.0, "step": 0.0001, "tooltip": "Learning rate of the token embedding."}),
            "lr_values": ("FLOAT", {"default": 0.03, "min": 0.0, "max": 1.0, "step": 0.0001, "tooltip": "Learning rate of the value targets."}),
            "train_beta": ("FLOAT", {"default": 0.75, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Gate bias during training (the paper: 0.75)."}),
            "train_tau": ("FLOAT", {"default": 0.1, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": "Gate temperature during training (the paper: 0.1)."}),
            "resolution": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64, "tooltip": "Training resolution (512 for SD1.5, 1024 for SDXL); photos are centre-cropped."}),
            "flip": ("BOOLEAN", {"default": True, "tooltip": "Random horizontal flips (turn off for asymmetric subjects, e.g. text)."}),
            "masked_loss": ("BOOLEAN", {"default": True, "tooltip": "With masks: learn only from the subject's pixels."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": False,
                             "tooltip": "Same seed, same concept (on one machine). Fixed: a new seed would train again."}),
            "filename": ("STRING", {"default": "my_concept", "tooltip": "Name of the file in models/perfusion; never overwritten."}),
        }, "optional": {
            "masks": ("MASK", {"tooltip": "One mask per image, white on the subject."}),
            "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip": "Recompute activations in backward: less memory, slower steps."}),
        }}

    def train(self, model, clip, vae, images, trigger, superclass, steps, batch_size, grad_accumulation, lr_embedding,
              lr_values, train_beta, train_tau, resolution, flip, masked_loss, seed, filename, masks=None,
              gradient_checkpointing=False):
        path, concept, losses = train_concept(model, clip, vae, images, trigger, superclass, steps, batch_size,
                                              grad_accumulation, lr_embedding, lr_values, train_beta, train_tau,
                                              resolution, flip, masked_loss, seed, filename, masks,
                                              gradient_checkpointing=gradient_checkpointing)
        name = os.path.basename(path)
        curve = _loss_curve(losses, steps)
        import nodes as comfy_nodes                     # the loss curve shows on the node when done
        preview = comfy_nodes.PreviewImage().save_images(curve, filename_prefix="perfusion_loss")["ui"]
        return {"ui": {"text": [f"{name}: {steps} steps, final loss {losses[-1]:.4g}"], **preview},
                "result": (apply_concept(model, concept, 1.0), add_concept_to_clip(clip, concept), name, curve)}
