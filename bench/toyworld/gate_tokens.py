"""Which prompt tokens does a concept's gate open on? Trains (or loads) a toy-world concept and prints,
per token of a few prompts, Perfusion's similarity s(e) = i*^T G e / i*^T G i* and the gate
g = sigmoid((s - beta) / tau) (paper Eq. 3) on the toy text encoder's output.

    cd bench && COMFYUI_PATH=... python -m toyworld.gate_tokens [--concept split-square] [--beta 0.7]

A value edit applies wherever g is open; an edit that should change the background is lost when the
gate opens on the words that name it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from . import graph
from . import world


def token_gates(clip, concept, prompt, beta, tau, gated_edit):
    """[(token text, similarity, gate)] for the prompt's tokens up to its end token; ``gated_edit`` is the
    pack's core module, whose similarity and gate these are."""
    import torch
    tokens = clip.tokenize(prompt)
    ids = [t if isinstance(t, int) else -1 for t, *_ in tokens["l"][0]]     # -1: the trigger's learned embedding
    with torch.inference_mode():
        context = clip.encode_from_tokens(tokens)[0].float()          # [77, D]
    basis = gated_edit.ProjectionBasis(concept.i_star[None], concept.G_i_star[None], concept.superclass_encoding[None])
    similarity = (context @ basis.coefficients)[:, 0]                        # the pack's s(e), paper Eq. 3
    gate = gated_edit.gate(similarity, beta, tau)
    vocab = {v: k for k, v in clip.tokenizer.clip_l.tokenizer.get_vocab().items()}
    end = ids.index(49407) + 2 if 49407 in ids else len(ids)
    vocab[-1] = "<trigger>"
    return [(vocab.get(i, str(i)).replace("</w>", ""), float(s), float(g))
            for i, s, g in zip(ids[:end], similarity[:end], gate[:end])]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="split-square", choices=[c.name for c in world.CONCEPTS])
    parser.add_argument("--beta", type=float, default=0.7)
    parser.add_argument("--tau", type=float, default=0.15)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="toyworld-gates-")
    pack = graph.setup(work)
    from . import benchmark
    from . import model as toy
    base = toy.load()
    concept = next(c for c in world.CONCEPTS if c.name == args.concept)
    trained = benchmark.train_perfusion(pack, base, concept, 0, steps=args.steps)
    path = os.path.join(work, "perfusion", f"perfusion-{concept.name}-0.safetensors")
    learned = pack.core.concept_file.read_concept(path)
    _, clip = pack.nodes.load_concept.PerfusionLoadConcept().load(base[0], base[1], os.path.basename(path), 1.0)
    word = trained.word
    for prompt in (f"a {word}", f"{benchmark.PREFIX} a {word}", f"a {word} on a {benchmark.EDIT_BACKGROUND[concept.name]} background",
                   f"a small {word}", f"a {concept.superclass} on a {benchmark.EDIT_BACKGROUND[concept.name]} background"):
        print(f"\n{prompt!r}  (beta {args.beta:g}, tau {args.tau:g})")
        for text, s, g in token_gates(clip, learned, prompt, args.beta, args.tau, pack.core.gated_edit):
            print(f"  {text:<14} s {s:6.2f}   gate {g:5.2f}")


if __name__ == "__main__":
    sys.exit(main())
