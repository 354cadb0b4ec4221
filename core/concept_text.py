"""Trigger words in prompts: the learned token embedding, and the superclass version of the prompt.

Both wrappers are duck-typed over ComfyUI's tokenizer (``SD1Tokenizer``, ``SDXLTokenizer``, SD2's) and
text encoder (``cond_stage_model``); a CLIP clone gets new wrappers, the shared originals are never
mutated. The trigger must be one BPE token per tower, so a prompt's chunking (77-token chunks,
weights like ``(sks:1.2)``) stays exactly as the stock tokenizer made it.
"""

from __future__ import annotations

import logging

from .clip_layer import current_layer, layer_mismatch
from .errors import ConceptError

TOWERS = ("clip_l", "clip_g", "clip_h")     # tokenizer attribute; the token dict key is the last letter
log = logging.getLogger("perfusion")
_WARNED = set()


def _word_ids(sub_tokenizer, word):
    ids = sub_tokenizer.tokenizer(word)["input_ids"]
    start = getattr(sub_tokenizer, "tokens_start", 1)
    end = -1 if getattr(sub_tokenizer, "end_token", None) is not None else None
    return ids[start:end]


class WholeWordSwap:
    """Token swapping shared by the tokenizer wrappers: ``self._subs`` maps a token dict key to that
    tower's SDTokenizer, ``self._word_end`` caches which token ids end a word, ``self.swaps`` maps a
    token dict key to {token id: embedding tensor}."""

    def tokenize_with_weights(self, text, return_word_ids=False, **kwargs):
        out = self.inner.tokenize_with_weights(text, return_word_ids, **kwargs)
        for key, segments in out.items():
            table = self.swaps.get(key)
            if table:
                out[key] = [self._swap(key, table, segment) for segment in segments]
        return out

    def _swap(self, key, table, segment):
        """The trigger's token becomes the embedding where it is a whole word: "sks", "(sks:1.2)",
        "sks," but not the tail of "flasks" (BPE: fla + sks</w>)."""
        out, previous = [], None
        for t in segment:
            token = t[0]
            if isinstance(token, int) and token in table and self._starts_word(key, previous):
                out.append((table[token], *t[1:]))
            else:
                out.append(t)
            previous = token
        return out

    def _starts_word(self, key, previous):
        if previous is None or not isinstance(previous, int):
            return True
        sub = self._subs[key]
        if previous in (getattr(sub, "start_token", None), getattr(sub, "end_token", None), getattr(sub, "pad_token", None)):
            return True
        cached = self._word_end.get((key, previous))
        if cached is None:
            text = sub.tokenizer.convert_ids_to_tokens(previous)
            cached = self._word_end[(key, previous)] = not isinstance(text, str) or text.endswith("</w>")
        return cached


class ConceptTokenizer(WholeWordSwap):
    """Tokenizer wrapper: the trigger's token id becomes the concept's embedding tensor.

    ``concepts``: sequence of (trigger, superclass, {tower: embedding [width]}, label).
    """

    def __init__(self, inner, concepts):
        if isinstance(inner, ConceptTokenizer):
            inner = inner.inner
        self.inner = inner
        self.concepts = tuple(concepts)
        self.swaps = {}            # token dict key -> {token id: embedding tensor}
        self.superclass_ids = {}   # id(embedding tensor) -> (embedding, superclass token id)
        self._subs = {}            # token dict key -> that tower's SDTokenizer
        self._word_end = {}        # (key, token id) -> does the token end a word (BPE "</w>")
        towers = [t for t in TOWERS if getattr(inner, t, None) is not None]
        if not towers:
            raise ConceptError("this CLIP's tokenizer has no clip_l / clip_g / clip_h tower; "
                               "Perfusion concepts need an SD1.x, SD2.x or SDXL text encoder")
        for trigger, superclass, embeddings, label in self.concepts:
            for tower in towers:
                sub = getattr(inner, tower)
                if tower not in embeddings:
                    raise ConceptError(f"{label} has no embedding for the {tower} text encoder this CLIP "
                                       f"uses (it has {', '.join(embeddings)}); it was made for another model family")
                ids = _word_ids(sub, trigger)
                if len(ids) != 1:
                    raise ConceptError(
                        f"{label}: the trigger {trigger!r} is {len(ids)} tokens for {tower}; a trigger must be "
                        "one token (a short rare word such as 'sks' works); retrain with such a trigger")
                self._subs[tower[-1]] = sub
                table = self.swaps.setdefault(tower[-1], {})
                if ids[0] in table:
                    raise ConceptError(f"{label}: its trigger {trigger!r} is the same token as another concept's trigger")
                table[ids[0]] = embeddings[tower]
                super_ids = _word_ids(sub, superclass)
                if not super_ids:
                    raise ConceptError(f"{label}: the superclass {superclass!r} has no tokens")
                if len(super_ids) > 1 and (label, tower) not in _WARNED:
                    # Files from before the trainer refused such superclasses: global key locking uses
                    # the last token alone, which is not what their keys were locked to.
                    _WARNED.add((label, tower))
                    log.warning("Perfusion: %s has the several-token superclass %r; global key locking uses its "
                                "last token alone, local key locking is unaffected. Train it again with a one-token "
                                "superclass", label, superclass)
                self.superclass_ids[id(embeddings[tower])] = (embeddings[tower], super_ids[-1])

    def untokenize(self, token_weight_pair):
        return self.inner.untokenize(token_weight_pair)

    def state_dict(self):
        return self.inner.state_dict()

    def __getattr__(self, name):
        if name == "inner":     # not set yet (e.g. during copy): avoid recursing
            raise AttributeError(name)
        return getattr(self.inner, name)


class ConceptTextEncoder:
    """Text-encoder wrapper: also encodes the prompt with every trigger replaced by its superclass
    token and returns it as a model cond, for global key locking (spec 4.2). A prompt without a
    trigger is encoded exactly as by the stock encoder; the patched model's sampler wrapper gives
    such conds their own encoding as superclass version, so positive and negative still batch.

    ``make_cond(tensor)`` wraps the context the way the sampler expects (comfy.conds.CONDCrossAttn).
    """

    def __init__(self, inner, superclass_ids: dict, cond_key: str, make_cond, layers=()):
        if isinstance(inner, ConceptTextEncoder):
            inner = inner.inner
        self.inner = inner
        self.superclass_ids = superclass_ids
        self.cond_key = cond_key
        self.make_cond = make_cond
        self.layers = tuple(layers)          # (concept label, layer it was trained at)

    def _check_layer(self):
        """CLIP.encode_from_tokens sets the towers' layer just before it calls us, so a CLIPSetLastLayer
        placed after 'Load Rank-1 Concept' is caught here rather than misfiring the gates silently."""
        if not self.layers:
            return
        used = current_layer(self.inner)
        for label, trained in self.layers:
            if trained != used:
                raise ConceptError(layer_mismatch(label, trained, used))

    def _superclass_tokens(self, token_weight_pairs):
        changed = False

        def swap(t):
            nonlocal changed
            hit = self.superclass_ids.get(id(t[0]))
            if hit is not None and hit[0] is t[0]:
                changed = True
                return (hit[1], *t[1:])
            return t
        if isinstance(token_weight_pairs, dict):
            swapped = {k: [[swap(t) for t in seg] for seg in v] for k, v in token_weight_pairs.items()}
        else:
            swapped = [[swap(t) for t in seg] for seg in token_weight_pairs]
        return swapped, changed

    def encode_token_weights(self, token_weight_pairs):
        self._check_layer()
        out = self.inner.encode_token_weights(token_weight_pairs)
        superclass_pairs, changed = self._superclass_tokens(token_weight_pairs)
        if not changed:
            return out           # no trigger: exactly what the stock text encoder returns
        superclass_context = self.inner.encode_token_weights(superclass_pairs)[0]
        extra = dict(out[2]) if len(out) > 2 else {}
        model_conds = dict(extra.get("model_conds", {}))
        model_conds[self.cond_key] = self.make_cond(superclass_context)
        extra["model_conds"] = model_conds
        return (out[0], out[1], extra)

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class PlaceholderTokenizer(WholeWordSwap):
    """Subject placeholders: marker words become per-tower embedding tensors where they are whole words.

    Wraps whatever tokenizer the CLIP has (a ConceptTokenizer included, so Perfusion triggers in the
    same prompt still work). ``swaps``: {tower ("clip_l", ...): {marker word: embedding [width]}}.
    SDClipModel.process_tokens puts a tensor at its position, so the prompt keeps its length.
    """

    def __init__(self, inner, swaps: dict):
        self.inner, self._subs, self._word_end, self.swaps = inner, {}, {}, {}
        for tower, table in swaps.items():
            sub = getattr(inner, tower, None)
            if sub is None:
                continue
            self._subs[tower[-1]] = sub
            ids = {}
            for word, embedding in table.items():
                word_ids = _word_ids(sub, word)
                if len(word_ids) != 1:
                    raise ConceptError(f"placeholder marker {word!r} is {len(word_ids)} tokens for {tower}")
                ids[word_ids[0]] = embedding
            self.swaps[tower[-1]] = ids
