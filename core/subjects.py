"""Encoded subjects (the SUBJECTS socket) and which sampler branch sees them.

A Subject is computed once by the encoder node and never changes: its image tokens (and their
"no subject" counterpart), where it goes, and how strongly and when it acts.

Branch table: ComfyUI batches conds by their index in the guider's cond list and tells the model
(``transformer_options["cond_or_uncond"]``). Which index carries the subject depends on the guider:
    CFGGuider (KSampler)   [positive, negative]          -> subject, plain
    DualCFGGuider          [negative, middle, positive]  -> plain, subject, subject
"plain" is the negative branch: IP-Adapter's own uncond tokens there (its CFG), no adapter at all for
subjref.v1 (Subject-Diffusion's uncond: no grounding tokens, no location mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import SubjectError
from .subject_regions import Box

SUBJECT, PLAIN = "subject", "plain"
BRANCHES_CFG = (SUBJECT, PLAIN)
BRANCHES_DUAL_CFG = (PLAIN, SUBJECT, SUBJECT)
BRANCH_TABLE_KEY = "subject_reference_branches"     # in transformer_options, set once per sampling
PLACEHOLDER = "<subject{}>"


@dataclass(frozen=True, eq=False)
class Subject:
    adapter_id: str             # the adapter it was encoded for (tokens only fit that one)
    box: Box
    region_mask: torch.Tensor | None   # [H, W] 0..1, or None: the box is the region
    weight: float
    start_percent: float
    end_percent: float
    tokens: torch.Tensor        # ip: image tokens [T, D]; subjref: grounding tokens [n_patch, token_dim]
    plain_tokens: torch.Tensor | None = None   # ip: the tokens of "no image" (negative branch)
    image_embeds: torch.Tensor | None = None   # subjref: CLIP image embedding, for the placeholder word
    label: str = "subject"
    extra: dict = field(default_factory=dict)


def branch_roles(cond_or_uncond, table) -> list:
    """Role of each batch chunk; an index the table does not know gets no subject."""
    return [table[i] if 0 <= i < len(table) else PLAIN for i in cond_or_uncond]


def table_for_guider(cond_names) -> tuple:
    return BRANCHES_DUAL_CFG if "middle" in cond_names else BRANCHES_CFG


def check_chain(subjects, adapter_id: str, adapter_label: str, max_subjects: int | None) -> tuple:
    subjects = tuple(subjects or ())
    if not subjects:
        raise SubjectError("subjects: the chain is empty; connect a 'Subject Reference Encoder'")
    for s in subjects:
        if s.adapter_id != adapter_id:
            raise SubjectError(f"subjects: {s.label} was encoded for another adapter; encode it with "
                               f"{adapter_label}, the adapter given here")
    if max_subjects is not None and len(subjects) > max_subjects:
        raise SubjectError(f"subjects: {len(subjects)} subjects, but {adapter_label} supports at most {max_subjects}")
    return subjects


def validate_timing(weight: float, start: float, end: float) -> None:
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0) or start > end:
        raise SubjectError(f"start_percent {start} / end_percent {end}: expected 0 <= start <= end <= 1")
    if weight != weight or abs(weight) > 100:
        raise SubjectError(f"weight {weight}: expected a finite number (usually 0..1.5)")
