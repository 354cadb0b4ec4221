"""Nodes "Load Subject Adapter", "Subject Reference Encoder", "Apply Subject Reference" and
"Subject Reference Text Encode" (thin: the math is in core/, the patches in subject_patch.py)."""

from __future__ import annotations

import logging
import re
import weakref

import torch
import torch.nn.functional as F

from ..core.concept_text import PlaceholderTokenizer
from ..core.errors import SubjectError
from ..core.ip_adapter import FEATURE_EMBEDS, FEATURE_PENULTIMATE
from ..core.ms_diffusion import DEFAULT_SCALE, TRAINED_MAX_SUBJECTS
from ..core.subject_regions import as_mask, ms_reference_crop, reference_crop, resolve_box
from ..core.subjects import PLACEHOLDER, Subject, check_chain, validate_timing
from . import subject_adapter
from .subject_adapter import BACKEND_IP, BACKEND_MS, load_adapter
from .subject_patch import apply_subjects

CATEGORY = "perfusion/subject reference"
# One rare single-BPE-token word per placeholder (same id in CLIP-L, -G and -H vocabularies).
MARKERS = ("phol", "szn", "nmwx", "lpg", "bnp", "irgc", "sqm", "bsp")   # not the usual triggers (sks, ohwx)
_PLACEHOLDER = re.compile(r"<subject(\d+)>")


class SubjectReferenceLoader:
    DESCRIPTION = ("Loads a subject adapter: an IP-Adapter / IP-Adapter-Plus file (models/ipadapter), "
                   "MS-Diffusion's ms_adapter.bin or its safetensors conversion (SDXL, with the ViT-bigG "
                   "CLIP-vision model clip_vision_g), or a subject adapter trained with 'Train Subject Adapter' "
                   "(models/subject_ref). The kind is detected from the file.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("SUBJECT_ADAPTER",)
    RETURN_NAMES = ("adapter",)
    OUTPUT_TOOLTIPS = ("Connect to 'Subject Reference Encoder', 'Apply Subject Reference' and 'Subject Reference Text Encode'.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"adapter_name": (subject_adapter.adapter_names(), {
            "tooltip": "ipadapter/...: IP-Adapter files (SD1.5 / SDXL, base, plus, full). subject_ref/...: "
                       "the pack's own adapters (format subjref.v1) and MS-Diffusion (ms_adapter.bin or its "
                       ".safetensors conversion; SDXL, needs clip_vision_g)."})}}

    def load(self, adapter_name):
        return (load_adapter(subject_adapter.adapter_path(adapter_name), adapter_name),)


def _encode_vision(clip_vision, crop):
    out = clip_vision.encode_image(crop, crop=False)
    return out


def _feature_error(adapter, what, got, expected):
    return SubjectError(f"clip_vision gives {what} of width {got}, but {adapter.label} ({adapter.describe()}) "
                        f"needs {expected}; load the CLIP-vision model the adapter was trained with "
                        "(ViT-H for most SD1.5 and the *_vit-h SDXL adapters, ViT-bigG (clip_vision_g) for "
                        "ip-adapter_sdxl and MS-Diffusion)")


_MEAN_IMAGE_FEATURES = weakref.WeakKeyDictionary()     # clip_vision -> {feature name: tensor}


def _mean_image_feature(clip_vision, feature):
    """IP-Adapter-Plus's uncond: CLIP-vision of all-zero *normalised* pixels, i.e. the mean colour.
    The same for every subject: one vision pass per CLIP-vision model."""
    cache = _MEAN_IMAGE_FEATURES.setdefault(clip_vision, {})
    if feature not in cache:
        size = getattr(clip_vision, "image_size", 224)
        mean = torch.tensor(clip_vision.image_mean, dtype=torch.float32).expand(1, size, size, 3).clone()
        cache[feature] = _encode_vision(clip_vision, mean)[feature].float().cpu()
    return cache[feature]


def _ip_tokens(adapter, clip_vision, crop, out):
    spec = adapter.module.spec
    feature = out[spec.feature]
    if feature.shape[-1] != spec.feature_dim:
        raise _feature_error(adapter, spec.feature, feature.shape[-1], spec.feature_dim)
    if spec.feature == FEATURE_EMBEDS:
        plain = torch.zeros_like(feature)                                  # IP-Adapter's own uncond
    else:
        plain = _mean_image_feature(clip_vision, spec.feature)
    module = adapter.module
    return module.tokens(feature.float().cpu())[0].float(), module.tokens(plain.float().cpu())[0].float()


def _subjref_tokens(adapter, clip_vision, out, box):
    c = adapter.module.config
    hidden, embeds = out["last_hidden_state"], out["image_embeds"]
    if hidden.shape[-1] != c.vision_width or hidden.shape[1] - 1 != c.n_patch:
        raise _feature_error(adapter, f"{hidden.shape[1] - 1} patch tokens", hidden.shape[-1],
                             f"{c.n_patch} patch tokens of width {c.vision_width}")
    if embeds.shape[-1] != c.vision_embed_dim:
        raise _feature_error(adapter, "image_embeds", embeds.shape[-1], c.vision_embed_dim)
    norm = clip_vision.model.vision_model.post_layernorm           # Subject-Diffusion reads ln_post(patches)
    patches = F.layer_norm(hidden[:, 1:].float().cpu(), norm.normalized_shape, norm.weight.float().cpu(),
                           None if norm.bias is None else norm.bias.float().cpu(), norm.eps)
    tokens = adapter.module.grounding_tokens(patches, box.xyxy()[None])
    return tokens[0].float(), embeds[0].float().cpu()


def phrase_embedding(clip, phrase: str) -> torch.Tensor:
    """The phrase encoded alone by the checkpoint's CLIP-L, its pooled output *without* the text projection
    (final LayerNorm at the end token, as MS-Diffusion's ``text_encoder(ids).pooler_output``) -> [width]."""
    tower = getattr(getattr(clip, "cond_stage_model", None), "clip_l", None)
    if tower is None:
        raise SubjectError("clip: this CLIP has no CLIP-L text encoder; MS-Diffusion reads the phrase with the "
                           "SDXL checkpoint's CLIP-L: connect the checkpoint's CLIP")
    tokens = clip.tokenize(phrase)
    if "l" not in tokens:
        raise SubjectError("clip: its tokenizer gives no CLIP-L tokens; connect the SDXL checkpoint's CLIP")
    clip.load_model()
    tower.reset_clip_options()
    tower.set_clip_options({"projected_pooled": False})
    try:
        _, pooled = tower.encode_token_weights(tokens["l"])[:2]
    finally:
        tower.reset_clip_options()
    if pooled is None:
        raise SubjectError("clip: its CLIP-L gave no pooled output for the phrase")
    return pooled[0].float().cpu()


def _ms_tokens(adapter, clip_vision, clip, phrase, image, subject_mask, box, region):
    spec = adapter.module.spec
    phrase = (phrase or "").strip()
    if not phrase:
        raise SubjectError(f"phrase: {adapter.label} ({adapter.describe()}) needs the subject's phrase, one or "
                           "a few words of what it is (e.g. 'dog', 'red backpack')")
    if clip is None:
        raise SubjectError(f"clip: {adapter.label} ({adapter.describe()}) encodes the phrase with the checkpoint's "
                           "CLIP-L; connect the SDXL checkpoint's CLIP to the encoder")
    embed = phrase_embedding(clip, phrase)
    if embed.shape[-1] != spec.phrase_dim:
        raise SubjectError(f"clip: its CLIP-L pooled output has width {embed.shape[-1]}, but {adapter.label} "
                           f"({adapter.describe()}) reads phrases of width {spec.phrase_dim}; connect the CLIP of "
                           "the SDXL checkpoint the adapter was trained for")
    crop = ms_reference_crop(image[0], subject_mask)
    out = _encode_vision(clip_vision, crop)
    feature = out[FEATURE_PENULTIMATE]
    if feature.shape[-1] != spec.feature_dim:
        raise _feature_error(adapter, FEATURE_PENULTIMATE, feature.shape[-1], spec.feature_dim)
    module = adapter.module
    tokens = module.tokens(feature.float().cpu(), embed[None], box.xyxy()[None])
    return tokens[0].float(), phrase


class SubjectReferenceEncoder:
    DESCRIPTION = ("Encodes one subject once: its reference photo (background removed with the subject mask), "
                   "where it goes (a box or a region mask) and how strongly / when it acts. Chain encoders "
                   "for several subjects.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("SUBJECTS",)
    RETURN_NAMES = ("subjects",)
    OUTPUT_TOOLTIPS = ("The subjects so far (this one last); connect to 'Apply Subject Reference' or the next encoder.",)

    @classmethod
    def INPUT_TYPES(cls):
        fraction = {"min": 0.0, "max": 1.0, "step": 0.01}
        return {"required": {
            "clip_vision": ("CLIP_VISION", {"tooltip": "The CLIP-vision model the adapter was trained with (usually "
                                                       "ViT-H; ViT-bigG, clip_vision_g, for MS-Diffusion)."}),
            "adapter": ("SUBJECT_ADAPTER", {"tooltip": "From 'Load Subject Adapter'."}),
            "image": ("IMAGE", {"tooltip": "A photo of the subject (the first image of a batch is used)."}),
            "x": ("FLOAT", {"default": 0.0, **fraction, "tooltip": "Box left edge, as a fraction of the generated image's width."}),
            "y": ("FLOAT", {"default": 0.0, **fraction, "tooltip": "Box top edge, as a fraction of the image's height."}),
            "width": ("FLOAT", {"default": 0.0, **fraction, "tooltip": "Box width (fraction). Width and height 0: "
                                "use the region mask's or the subject mask's bounding box (whole image without masks)."}),
            "height": ("FLOAT", {"default": 0.0, **fraction, "tooltip": "Box height (fraction); see width."}),
            "weight": ("FLOAT", {"default": 0.8, "min": -1.0, "max": 3.0, "step": 0.05,
                                 "tooltip": "How strongly the subject shows; 0 turns it off. MS-Diffusion: "
                                            "multiplies Apply's scale (1 = the scale, MS-Diffusion's subject_scales)."}),
            "start_percent": ("FLOAT", {"default": 0.0, **fraction, "step": 0.001,
                                        "tooltip": "First step (fraction of sampling) where the subject acts."}),
            "end_percent": ("FLOAT", {"default": 1.0, **fraction, "step": 0.001,
                                      "tooltip": "Last step (fraction of sampling) where the subject acts."}),
        }, "optional": {
            "subject_mask": ("MASK", {"tooltip": "White on the subject in the photo: the background is replaced "
                                                 "by white and the photo cropped to the subject (Subject-Diffusion). "
                                                 "Paint it in Load Image's mask editor; for a cut-out PNG (transparent "
                                                 "background) Load Image's MASK is the background: add Invert Mask."}),
            "region_mask": ("MASK", {"tooltip": "Where the subject goes in the generated image (overrides the box)."}),
            "subjects": ("SUBJECTS", {"tooltip": "Subjects encoded before, to place several subjects in one image. "
                                                 f"MS-Diffusion was trained with at most {TRAINED_MAX_SUBJECTS} "
                                                 "subjects per image: more are allowed, untested by its authors."}),
            "clip": ("CLIP", {"tooltip": "MS-Diffusion only: the SDXL checkpoint's CLIP; its CLIP-L encodes the phrase."}),
            "phrase": ("STRING", {"default": "", "tooltip": "MS-Diffusion only (required there): what the subject "
                                  "is, in a word or a few ('dog', 'red backpack'). Encoded alone; the prompt need "
                                  "not change, but naming the subject there helps."}),
        }}

    def encode(self, clip_vision, adapter, image, x, y, width, height, weight, start_percent, end_percent,
               subject_mask=None, region_mask=None, subjects=None, clip=None, phrase=""):
        previous = tuple(subjects or ())
        if previous:
            check_chain(previous, adapter.id, adapter.label, None)
        if len(previous) + 1 > adapter.max_subjects:
            raise SubjectError(f"subjects: this would be subject {len(previous) + 1}, but {adapter.label} "
                               f"supports at most {adapter.max_subjects}")
        if image.ndim != 4 or image.shape[-1] < 3:
            raise SubjectError(f"image: expected an IMAGE [batch, height, width, 3], got {list(image.shape)}")
        validate_timing(weight, start_percent, end_percent)
        if len(previous) + 1 > TRAINED_MAX_SUBJECTS and adapter.backend == BACKEND_MS:
            logging.getLogger("perfusion").warning(
                "Perfusion: subject %d on %s: MS-Diffusion was trained with at most %d subjects per image",
                len(previous) + 1, adapter.label, TRAINED_MAX_SUBJECTS)
        if adapter.backend != BACKEND_IP and weight < 0:
            raise SubjectError(f"weight {weight}: a subject adapter ({adapter.describe()}) takes weights from 0 up")
        subject_mask, region = as_mask(subject_mask, "subject_mask"), as_mask(region_mask, "region_mask")
        box = resolve_box(x, y, width, height, subject_mask, region)
        if region is not None and not bool((region > 0).any()):
            raise SubjectError("region_mask is empty; paint where the subject goes white")
        label = f"subject {len(previous) + 1}"
        if adapter.backend == BACKEND_MS:
            with torch.inference_mode():
                tokens, phrase = _ms_tokens(adapter, clip_vision, clip, phrase, image, subject_mask, box, region)
            subject = Subject(adapter.id, box, region, float(weight), start_percent, end_percent, tokens,
                              label=f"{label} ('{phrase}')", extra={"phrase": phrase})
            return (previous + (subject,),)
        crop = reference_crop(image[0], subject_mask)
        out = _encode_vision(clip_vision, crop)
        if adapter.backend == BACKEND_IP:
            tokens, plain = _ip_tokens(adapter, clip_vision, crop, out)
            subject = Subject(adapter.id, box, region, float(weight), start_percent, end_percent, tokens,
                              plain_tokens=plain, label=label)
        else:
            tokens, embeds = _subjref_tokens(adapter, clip_vision, out, box)
            subject = Subject(adapter.id, box, region, float(weight), start_percent, end_percent, tokens,
                              image_embeds=embeds, label=label)
        return (previous + (subject,),)


class SubjectReferenceApply:
    DESCRIPTION = ("Makes the model draw the encoded subjects, each in its own region. Works together with "
                   "Perfusion concepts, LoRAs and IPAdapter nodes on the same model.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the subjects; sample it with prompts from 'Subject Reference Text Encode'.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.x or SDXL model matching the adapter."}),
            "adapter": ("SUBJECT_ADAPTER", {"tooltip": "The adapter the subjects were encoded with."}),
            "subjects": ("SUBJECTS", {"tooltip": "From 'Subject Reference Encoder' (chain them for several subjects)."}),
        }, "optional": {
            "scale": ("FLOAT", {"default": DEFAULT_SCALE, "min": 0.0, "max": 3.0, "step": 0.05,
                                "tooltip": "MS-Diffusion only: the image attention's scale (0.6 as its authors "
                                           "recommend; 0.4 when a subject fills the whole image, such as a "
                                           "background), times each subject's weight. The other backends ignore it."}),
        }}

    def apply(self, model, adapter, subjects, scale=DEFAULT_SCALE):
        subjects = check_chain(subjects, adapter.id, adapter.label, adapter.max_subjects)
        if not (scale == scale and 0.0 <= scale <= 3.0):
            raise SubjectError(f"scale {scale}: expected a number from 0 to 3 (MS-Diffusion's default is {DEFAULT_SCALE})")
        return (apply_subjects(model, adapter, subjects, scale=scale),)


def placeholder_numbers(text: str, count: int) -> list:
    numbers = [int(n) for n in _PLACEHOLDER.findall(text)]
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise SubjectError(f"text: {PLACEHOLDER.format(bad[0])} has no subject; there are {count} subjects "
                           f"({', '.join(PLACEHOLDER.format(i + 1) for i in range(count))})")
    return numbers


class SubjectReferenceTextEncode:
    DESCRIPTION = ("Encodes a prompt in which <subject1>, <subject2>, ... stand for the encoded subjects. With a "
                   "subject adapter (subjref.v1) each placeholder becomes the subject's image embedding; with "
                   "an IP-Adapter or MS-Diffusion the placeholders are dropped (name the subject in words, e.g. 'a dog <subject1>').")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The positive conditioning.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "The text encoder (a CLIP from 'Load Rank-1 Concept' keeps its triggers)."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                "default": "a photo of a dog <subject1> and a cat <subject2> in a garden",
                                "tooltip": "The prompt; <subject1> is the first encoded subject, <subject2> the second..."}),
            "subjects": ("SUBJECTS", {"tooltip": "The subjects the placeholders refer to."}),
            "adapter": ("SUBJECT_ADAPTER", {"tooltip": "The adapter the subjects were encoded with."}),
        }}

    def encode(self, clip, text, subjects, adapter):
        subjects = check_chain(subjects, adapter.id, adapter.label, None)
        used = placeholder_numbers(text, len(subjects))
        if adapter.backend in (BACKEND_IP, BACKEND_MS) or not used:
            plain = re.sub(r"\s*" + _PLACEHOLDER.pattern, "", text)
            return (clip.encode_from_tokens_scheduled(clip.tokenize(plain)),)
        if len(subjects) > len(MARKERS):
            raise SubjectError(f"subjects: at most {len(MARKERS)} placeholders per prompt")
        swaps = {}
        module = adapter.module
        with torch.inference_mode():
            embeddings = {n: module.placeholder_embedding(subjects[n - 1].image_embeds[None]) for n in set(used)}
        for tower in ("clip_l", "clip_g", "clip_h"):
            if getattr(clip.tokenizer, tower, None) is None:
                continue
            if tower[-1] not in module.cls_mlp:
                raise SubjectError(f"{adapter.label} has no placeholder embedding for the {tower} text encoder "
                                   f"(it has {', '.join('clip_' + k for k in module.cls_mlp)}); it was trained "
                                   "for another model family")
            swaps[tower] = {MARKERS[n - 1]: embeddings[n][tower[-1]][0].float().cpu() for n in set(used)}
        marked = _PLACEHOLDER.sub(lambda m: " " + MARKERS[int(m.group(1)) - 1] + " ", text)
        tokens = PlaceholderTokenizer(clip.tokenizer, swaps).tokenize_with_weights(marked)
        spliced = sum(1 for segment in next(iter(tokens.values())) for t in segment if isinstance(t[0], torch.Tensor)
                      and any(t[0] is e for table in swaps.values() for e in table.values()))
        if spliced != len(used):
            raise SubjectError(f"text: {len(used)} placeholders, but {spliced} could be replaced; a placeholder must "
                               "stand alone as a word (e.g. 'a dog <subject1> on a sofa'), and the marker words "
                               f"{', '.join(MARKERS[:len(subjects)])} must not be Perfusion triggers on this CLIP")
        return (clip.encode_from_tokens_scheduled(tokens),)
