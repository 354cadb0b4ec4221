"""Node "Train Subject Adapter" (SubjectReferenceTrain): trains a subjref.v1 adapter in the graph.

Subject-Diffusion's recipe (Ma et al. 2023, Sec. 3.4) restricted to the adapter: each training image
is its own reference. Its segmented subject (mask) is shown to CLIP-vision; the mask's bounding box is
the box; the caption's <subject1> becomes the subject's image embedding; the UNet learns to denoise
the image with the adapter's help. UNet, text encoder and CLIP-vision stay frozen (bit-identical
afterwards). Subject dropped 10% (the negative branch at inference has no adapter), caption dropped 5%.
Runs like Train Perfusion Concept: inference_mode(False) on clones, out-of-place CLIP residuals.
"""

from __future__ import annotations

import datetime
import logging
import os

import folder_paths
import torch

import comfy.model_management
import comfy.model_sampling
import comfy.utils

from ..core import training
from ..core.concept_text import PlaceholderTokenizer
from ..core.errors import SubjectError
from ..core.subject_layers import block_path, layer_key
from ..core.subject_regions import mask_bbox, reference_crop, region_grid
from ..core.subjref_adapter import PRESETS, AdapterConfig, SubjectAdapter, write_adapter
from .clip_patch import _tower_widths, encode_prompts
from .model_patch import cross_attention_layers, model_family
from .subject_adapter import BACKEND_SUBJREF, FOLDERS, LoadedAdapter, check_fits, load_adapter
from .subject_nodes import MARKERS, _encode_vision
from .train_concept import (_Frozen, _clip_layers, _deinference_, _diverged, _dtype, _forward_injection,
                            _loss_curve, _out_of_place_residuals, _prepare_images, _report, _training_compute_dtype,
                            concept_filename)

log = logging.getLogger("perfusion")
PLACEHOLDER = "<subject1>"
DROP_SUBJECT, DROP_CAPTION = 0.10, 0.05
HIDDEN_DIM, HEADS, MAX_SUBJECTS = 1024, 8, 4


class _TrainingGrounding:
    """middle_patch and input_block_patch for training: one subject per batch row, with gradients."""

    def __init__(self, adapter: SubjectAdapter, paths: dict):
        self.adapter, self.paths = adapter, paths
        self.set_batch(None, None, None)

    def set_batch(self, objs, boxes, keep):
        self.objs, self.boxes, self.keep, self._grids = objs, boxes, keep, {}

    def regions(self, height, width, device):
        """[B, N] 1 inside each row's box (0 for rows whose subject is dropped), once per resolution and step."""
        key = (height, width)
        if key not in self._grids:
            grids = torch.stack([region_grid(box, None, height, width) for box in self.boxes]).to(device)
            self._grids[key] = grids * self.keep[:, None].to(device)
        return self._grids[key]

    def middle(self, x, extra_options):
        path = self.paths.get((*extra_options["block"], extra_options.get("block_index", 0)))
        if path is None:
            return x
        shape = extra_options["activations_shape"]
        region = self.regions(shape[-2], shape[-1], x.device)
        visible = (region > 0)[:, :, None].expand(-1, -1, self.objs.shape[1])
        fuser = self.adapter.fuser_by_path[path]
        return fuser(x.float(), self.objs, visible, region[..., None]).to(x.dtype)

    def input_block(self, h, transformer_options):
        if transformer_options.get("block") != ("input", 0):
            return h
        region = self.regions(h.shape[-2], h.shape[-1], h.device).reshape(h.shape[0], 1, *h.shape[-2:])
        return h + self.adapter.mask_in(region).to(h.dtype)


def _config(model, clip, vision_out, preset) -> AdapterConfig:
    family, context_dim = model_family(model)
    layers = cross_attention_layers(model)
    conv_in = model.get_model_object("diffusion_model").input_blocks[0][0]
    hidden, embeds = vision_out["last_hidden_state"], vision_out["image_embeds"]
    return AdapterConfig(
        family=family, preset=preset, vision_width=hidden.shape[-1], vision_embed_dim=embeds.shape[-1],
        n_patch=hidden.shape[1] - 1, token_dim=context_dim, hidden_dim=HIDDEN_DIM, heads=HEADS,
        max_subjects=MAX_SUBJECTS, model_channels=conv_in.out_channels,
        blocks=tuple(sorted((block_path(p), m.to_q.in_features) for p, m in layers.items())),
        towers=tuple(sorted((t[-1], w) for t, w in _tower_widths(clip).items())))


def _captions(captions: str, count: int) -> list:
    lines = [c.strip() for c in (captions or "").splitlines() if c.strip()]
    if not lines:
        raise SubjectError("captions: give one caption per image (one per line), or one for all; "
                           f"{PLACEHOLDER} marks the subject, e.g. 'a photo of a dog {PLACEHOLDER} on grass'")
    if len(lines) == 1:
        lines = lines * count
    if len(lines) != count:
        raise SubjectError(f"captions: {len(lines)} lines for {count} images; give one per image or one for all")
    bad = [c for c in lines if "<subject" in c.replace(PLACEHOLDER, "")]
    if bad:
        raise SubjectError(f"captions: {bad[0]!r} uses another placeholder; training has one subject: {PLACEHOLDER}")
    return [c if PLACEHOLDER in c else f"{c} {PLACEHOLDER}" for c in lines]


def _validate(images, masks, preset, batch_size, steps, lr):
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[0] == 0:
        raise SubjectError("images: no images; connect photos of subjects (an IMAGE batch)")
    if masks is None or masks.ndim not in (2, 3):
        raise SubjectError("masks: one MASK per image is needed (white on the subject)")
    masks = masks[None] if masks.ndim == 2 else masks
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[1:3]:
        raise SubjectError(f"masks: {masks.shape[0]} masks of {masks.shape[-1]}x{masks.shape[-2]}, for "
                           f"{images.shape[0]} images of {images.shape[2]}x{images.shape[1]}; give one mask per image, same size")
    for k in range(masks.shape[0]):
        mask_bbox(masks[k].float(), f"masks: mask {k + 1}")
    if preset not in PRESETS:
        raise SubjectError(f"preset {preset!r}: expected one of {', '.join(PRESETS)}")
    if batch_size < 1 or steps < 1 or not lr > 0:
        raise SubjectError("steps, batch_size and lr must be positive")
    return masks.float()


class SubjectTrainer:
    """The training loop, split so tests can evaluate a fixed batch between steps."""

    def __init__(self, model, clip, clip_vision, vae, images, masks, captions, preset="lite", lr=1e-4,
                 batch_size=2, seed=0, resolution=512):
        masks = _validate(images, masks, preset, batch_size, 1, lr)
        family, _ = model_family(model)
        if family == "unknown":
            raise SubjectError("model: subject adapters train on SD1.x, SD2.x or SDXL models only")
        self.captions = _captions(captions, images.shape[0])
        self.batch_size, self.resolution = batch_size, resolution
        self.generator = torch.Generator().manual_seed(int(seed))
        self.device = comfy.model_management.get_torch_device()
        self.base_tokenizer = clip.tokenizer
        self.text_model = getattr(clip.cond_stage_model, "inner", clip.cond_stage_model)

        with torch.inference_mode(False), torch.no_grad():
            crops = [reference_crop(images[k], masks[k]) for k in range(images.shape[0])]
            outs = [_encode_vision(clip_vision, crop) for crop in crops]
            norm = clip_vision.model.vision_model.post_layernorm
            ln = [t.detach().float().cpu() if t is not None else None for t in (norm.weight, norm.bias)]
            self.patches = torch.cat([torch.nn.functional.layer_norm(o["last_hidden_state"][:, 1:].float().cpu().clone(),
                                                                     norm.normalized_shape, ln[0], ln[1], norm.eps)
                                      for o in outs])
            self.image_embeds = torch.cat([o["image_embeds"].float().cpu().clone() for o in outs])
            self.latents, self.flipped, _ = _prepare_images(vae, model, images, None, resolution)
            square = comfy.utils.common_upscale(masks[:, None], resolution, resolution, "bilinear", "center")[:, 0]
            self.boxes = [mask_bbox(square[k], f"masks: mask {k + 1}") for k in range(square.shape[0])]
            self.adapter = SubjectAdapter(_config(model, clip, outs[0], preset)).initialise_(int(seed)).to(self.device)
        self.adapter.requires_grad_(True)

        self.model, self.clip = model, clip
        keys = {layer_key(p): block_path(p) for p in cross_attention_layers(model)}
        self.grounding = _TrainingGrounding(self.adapter, keys)
        self.train_clip = clip.clone()
        self.train_clip.cond_stage_model = self.text_model
        self.train_clip.patcher.set_injections("perfusion_autograd", [_forward_injection(_clip_layers, _out_of_place_residuals)])
        self.train_model = model.clone()
        compute_dtype = _training_compute_dtype(model, self.device)
        if compute_dtype is not None:
            self.train_model.set_model_compute_dtype(compute_dtype)
        self.train_model.set_model_patch(self.grounding.middle, "middle_patch")
        self.train_model.set_model_input_block_patch(self.grounding.input_block)
        self.frozen = _Frozen(self.train_model.model, self.train_clip.patcher.model)
        self.optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=lr, weight_decay=0.0)
        self.sampling = model.get_model_object("model_sampling")
        self.v_prediction = isinstance(self.sampling, comfy.model_sampling.V_PREDICTION)
        self.sigma_data = float(getattr(self.sampling, "sigma_data", 1.0))
        self.per_prompt_pooled = bool(model.model.adm_channels)

    def __enter__(self):
        self._grad = torch.enable_grad()
        self._inference = torch.inference_mode(False)
        self._inference.__enter__()
        self._grad.__enter__()
        self._load()
        self.frozen.freeze()
        return self

    def __exit__(self, *exc):
        try:
            self.train_model.unpatch_model(unpatch_weights=False)
            self.train_clip.patcher.unpatch_model(unpatch_weights=False)
            self.frozen.restore()
        finally:
            self._grad.__exit__(*exc)
            self._inference.__exit__(*exc)

    def _load(self):
        comfy.model_management.load_models_gpu([self.train_model, self.train_clip.patcher])
        _deinference_(self.train_clip.patcher.model)
        _deinference_(self.train_model.model)

    def loss(self, pick, sigma, noise, keep, captions, mirror=None):
        """The denoising loss of rows ``pick`` (image indices) at ``sigma`` with ``noise``; ``keep`` [B]
        says which rows see their subject."""
        self._load()
        mirror = torch.zeros(len(pick), dtype=torch.bool) if mirror is None else mirror
        x0 = torch.where(mirror[:, None, None, None], self.flipped[pick], self.latents[pick])
        boxes = [self.boxes[int(k)] for k in pick]
        boxes = [type(b)(1 - b.x - b.width, b.y, b.width, b.height) if m else b for b, m in zip(boxes, mirror.tolist())]
        embeds = self.image_embeds[pick].to(self.device)
        placeholder = self.adapter.placeholder_embedding(embeds)
        tokens = []
        for row, caption in enumerate(captions):
            swaps = {t: {MARKERS[0]: placeholder[t[-1]][row]} for t in ("clip_l", "clip_g", "clip_h")
                     if getattr(self.base_tokenizer, t, None) is not None}
            text = caption.replace(PLACEHOLDER, f" {MARKERS[0]} ")
            tokens.append(PlaceholderTokenizer(self.base_tokenizer, swaps).tokenize_with_weights(text))
        context, pooled = encode_prompts(self.train_clip, tokens, self.per_prompt_pooled)
        xyxy = torch.stack([b.xyxy() for b in boxes]).to(self.device)
        self.grounding.set_batch(self.adapter.grounding_tokens(self.patches[pick].to(self.device), xyxy),
                                 boxes, keep.float())
        extra = {}
        if self.per_prompt_pooled:
            extra["y"] = self.train_model.model.encode_adm(
                pooled_output=pooled, width=self.resolution, height=self.resolution, crop_w=0, crop_h=0,
                target_width=self.resolution, target_height=self.resolution).to(self.device)
        xt = self.sampling.noise_scaling(sigma, noise, x0)
        prediction = self.train_model.model.apply_model(
            xt.to(self.device), sigma.to(self.device), c_crossattn=context.to(self.device, _dtype(self.train_model)),
            transformer_options=dict(self.train_model.model_options["transformer_options"]), **extra)
        return training.masked_mse(prediction, x0.to(self.device),
                                   training.objective_weight(sigma.to(self.device), self.v_prediction, self.sigma_data))

    def step(self, step_index):
        comfy.model_management.throw_exception_if_processing_interrupted()
        g, b = self.generator, self.batch_size
        pick = torch.randint(self.latents.shape[0], (b,), generator=g)
        mirror = torch.rand(b, generator=g) < 0.5
        keep = torch.rand(b, generator=g) >= DROP_SUBJECT
        captions = ["" if float(u) < DROP_CAPTION else self.captions[int(k)]
                    for u, k in zip(torch.rand(b, generator=g), pick)]
        sigma = torch.tensor([self.sampling.percent_to_sigma(float(u))
                              for u in torch.rand(b, generator=g).clamp(1e-4, 1 - 1e-4)])
        noise = torch.randn(self.latents[pick].shape, generator=g)
        loss = self.loss(pick, sigma, noise, keep, captions, mirror)
        if not torch.isfinite(loss):
            raise _diverged(step_index, f"the loss is {loss.item()}")
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def output_path(filename: str) -> str:
    name = concept_filename(filename)
    path = os.path.join(folder_paths.get_folder_paths(FOLDERS[0])[0], name)
    if os.path.exists(path):
        raise SubjectError(f"filename: '{name}' already exists in {os.path.dirname(path)}; choose another name "
                           "(files are never overwritten)")
    return path


def train_subject_adapter(model, clip, clip_vision, vae, images, masks, captions, steps=2000, lr=1e-4, batch_size=2,
                          preset="lite", seed=0, filename="my_subject_adapter", resolution=512, progress=True):
    """Trains and saves; returns (path, the saved file loaded as an adapter, losses, the trained weights
    rounded as saved). Writes nothing unless it finishes."""
    path = output_path(filename)
    _validate(images, masks, preset, batch_size, steps, lr)
    trainer = SubjectTrainer(model, clip, clip_vision, vae, images, masks, captions, preset, lr, batch_size, seed, resolution)
    check_fits(LoadedAdapter(BACKEND_SUBJREF, trainer.adapter, "trained"), model)
    bar = comfy.utils.ProgressBar(steps) if progress else None
    losses = []
    with trainer:
        for step in range(steps):
            losses.append(trainer.step(step))
            if bar is not None:
                bar.update_absolute(step + 1, steps)
            _report(step + 1, steps, losses[-1])
    adapter = trainer.adapter.to("cpu").requires_grad_(False).eval()
    info = {"steps": steps, "images": images.shape[0], "seed": seed, "lr": lr, "final_loss": f"{losses[-1]:.6g}",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    write_adapter(path, adapter, dtype=torch.float16, extra_metadata=info)
    log.info("Subject adapter: saved %s (%d steps, final loss %.4g)", path, steps, losses[-1])
    trained = {k: v.detach().half().float() for k, v in adapter.state_dict().items()}   # what the file holds
    # The output is the saved file, loaded as "Load Subject Adapter" loads it.
    return path, load_adapter(path, f"{FOLDERS[0]}/{os.path.basename(path)}"), losses, trained


class SubjectReferenceTrain:
    DESCRIPTION = ("Trains the pack's own subject adapter (subjref.v1: grounding tokens, gated self-attention in "
                   "every transformer block, location-mask channel, placeholder embedding) on your images, each "
                   "with a subject mask and a caption. The checkpoint and text encoder stay unchanged. Saves to "
                   "models/subject_ref.")
    CATEGORY = "perfusion/subject reference"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("SUBJECT_ADAPTER", "STRING", "IMAGE")
    RETURN_NAMES = ("adapter", "filename", "loss_curve")
    OUTPUT_TOOLTIPS = ("The trained adapter, loaded from the saved file: connect it like 'Load Subject Adapter'.",
                       "The saved file's name in models/subject_ref (for 'Load Subject Adapter' later).",
                       "The loss per step, as an image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The checkpoint's model (SD1.x, SD2.x or SDXL); it is not changed."}),
            "clip": ("CLIP", {"tooltip": "The checkpoint's text encoder; it is not changed."}),
            "clip_vision": ("CLIP_VISION", {"tooltip": "The CLIP-vision model to use with the adapter later (ViT-H recommended)."}),
            "vae": ("VAE", {"tooltip": "The checkpoint's VAE, to encode the images once."}),
            "images": ("IMAGE", {"tooltip": "Training images (a batch); each contains its subject."}),
            "masks": ("MASK", {"tooltip": "One mask per image, white on the subject: its crop is the reference, its box the location."}),
            "captions": ("STRING", {"multiline": True, "default": f"a photo of a dog {PLACEHOLDER} in a park",
                                    "tooltip": f"One caption per image (one per line), or one for all. {PLACEHOLDER} "
                                               "marks the subject (added at the end if missing)."}),
            "steps": ("INT", {"default": 2000, "min": 1, "max": 200000, "tooltip": "Optimizer steps."}),
            "lr": ("FLOAT", {"default": 0.0001, "min": 0.000001, "max": 0.1, "step": 0.000001, "tooltip": "AdamW learning rate."}),
            "batch_size": ("INT", {"default": 2, "min": 1, "max": 64, "tooltip": "Images per step."}),
            "preset": (list(PRESETS), {"default": "lite", "tooltip": "full: gated attention and feed-forward in every block "
                                       "(Subject-Diffusion / GLIGEN); lite: attention only, about 3x smaller and faster."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": False,
                             "tooltip": "Same seed, same adapter (on one machine). Fixed: a new seed would train again."}),
            "filename": ("STRING", {"default": "my_subject_adapter", "tooltip": "Name of the file in models/subject_ref; never overwritten."}),
        }, "optional": {
            "resolution": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64,
                                   "tooltip": "Training resolution (512 for SD1.5, 1024 for SDXL); images are centre-cropped."}),
        }}

    def train(self, model, clip, clip_vision, vae, images, masks, captions, steps, lr, batch_size, preset, seed, filename,
              resolution=512):
        path, adapter, losses, _ = train_subject_adapter(model, clip, clip_vision, vae, images, masks, captions, steps, lr,
                                                      batch_size, preset, seed, filename, resolution)
        name = os.path.basename(path)
        curve = _loss_curve(losses, steps)
        import nodes as comfy_nodes
        preview = comfy_nodes.PreviewImage().save_images(curve, filename_prefix="subject_adapter_loss")["ui"]
        return {"ui": {"text": [f"{name}: {steps} steps, final loss {losses[-1]:.4g}"], **preview},
                "result": (adapter, name, curve)}
