"""Statistics of caption corpora for the text-encoder covariance C, with SD1's real CLIP tokenizer.

For each corpus file (one prompt per line) it prints: prompts, 77-token chunks (= text-encoder
sequences, what computing C costs), distinct CLIP tokens, word tokens per prompt (min / median / p95 /
max; BOS, EOS and padding not counted), the fraction of prompts that need more than one chunk, which
chunk positions 0..76 hold a real token (BOS .. first EOS) somewhere in the corpus, and the coverage
of a held-out prompt set: the fraction of its word-token occurrences, and of its distinct word tokens,
that occur in the corpus, with the most frequent held-out tokens the corpus lacks.

Prompts are tokenized the way ComfyUI's CLIPTextEncode does (comfy.sd1_clip.SD1Tokenizer: prompt
weights like "(red hat:1.2)" parsed, long prompts split into 77-token chunks), from the ComfyUI
checkout in $COMFYUI_PATH. Needs no model weights and no GPU; a few seconds per 10k prompts.

    COMFYUI_PATH=/path/to/ComfyUI python bench/corpus_stats.py data/captions.txt [more.txt ...]
        [--heldout bench/data/heldout_prompts.txt] [--growth] [--missing 25] [--rate 5 20] [--out stats.md]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_HELDOUT = os.path.join(HERE, "data", "heldout_prompts.txt")
# Full-size CLIP-L (12 layers, fp32) sequences per second on a CPU: about 5 measured on 2 cores, up to
# ~20 on a faster desktop CPU; a GPU does thousands. Used for the time estimate only (--rate).
SEQUENCES_PER_SECOND = (5, 20)


def comfy_tokenizer():
    """ComfyUI's SD1 tokenizer (CLIP-L BPE from comfy/sd1_tokenizer) from $COMFYUI_PATH."""
    path = os.environ.get("COMFYUI_PATH")
    if not path or not os.path.isfile(os.path.join(path, "comfy", "sd1_clip.py")):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (its comfy/sd1_clip.py and comfy/sd1_tokenizer are used)")
    if sys.path[0] != path:
        sys.path.insert(0, path)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args
    args.cpu = True                     # importing comfy.sd1_clip loads comfy.model_management
    import comfy.sd1_clip
    return comfy.sd1_clip.SD1Tokenizer()


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


class Tokenized:
    """Per prompt: its chunks as token-id lists, and its word tokens (no BOS / EOS / padding)."""

    def __init__(self, tokenizer, prompts):
        inner = tokenizer.clip_l if hasattr(tokenizer, "clip_l") else tokenizer
        self.start, self.end = inner.start_token, inner.end_token
        self.max_length = inner.max_length
        self.chunks, self.words = [], []
        for text in prompts:
            sections = next(iter(tokenizer.tokenize_with_weights(text).values()))
            ids = [[int(t[0]) for t in section] for section in sections]
            self.chunks.append(ids)
            self.words.append([t for section in ids for t in section[1:self.real_length(section) - 1]])

    def real_length(self, section):
        """BOS .. the first EOS, inclusive (a chunk's non-padding positions)."""
        for k, t in enumerate(section):
            if k > 0 and t == self.end:
                return k + 1
        return len(section)


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def ranges(positions):
    out, run = [], []
    for p in sorted(positions):
        if run and p == run[-1] + 1:
            run.append(p)
        else:
            if run:
                out.append(run)
            run = [p]
    if run:
        out.append(run)
    return ", ".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in out) or "none"


def corpus_stats(name, prompts, tok: Tokenized, heldout: Tokenized | None, growth=False, missing=25,
                 rate=SEQUENCES_PER_SECOND):
    lengths = [len(w) for w in tok.words]
    n_chunks = sum(len(c) for c in tok.chunks)
    vocab = collections.Counter(t for w in tok.words for t in w)
    position_counts = collections.Counter()
    for chunks in tok.chunks:
        for section in chunks:
            position_counts.update(range(tok.real_length(section)))
    width = tok.max_length
    row = {
        "corpus": name,
        "prompts": len(prompts),
        "chunks (encoder sequences)": n_chunks,
        "distinct tokens": len(vocab),
        "word tokens": sum(lengths),
        "tokens/prompt min/median/p95/max": f"{min(lengths)} / {statistics.median(lengths):g} / "
                                            f"{percentile(lengths, 0.95)} / {max(lengths)}",
        "multi-chunk prompts": f"{sum(len(c) > 1 for c in tok.chunks) / len(prompts):.1%}",
        "positions with real tokens": f"{len(position_counts)}/{width} ({ranges(position_counts)})",
        "real tokens at position 76 / 60-76": f"{position_counts.get(width - 1, 0)} / "
                                              f"{sum(position_counts.get(p, 0) for p in range(60, width))}",
        f"CLIP-L encoding time at {rate[0]:g}-{rate[1]:g} seq/s": f"{n_chunks / rate[1] / 60:.0f}-"
                                                                f"{n_chunks / rate[0] / 60:.0f} min",
    }
    lacking = []
    if heldout is not None:
        held = collections.Counter(t for w in heldout.words for t in w)
        covered = sum(n for t, n in held.items() if t in vocab)
        row["held-out occurrences covered"] = f"{covered / sum(held.values()):.1%}"
        row["held-out distinct tokens covered"] = f"{sum(t in vocab for t in held) / len(held):.1%}"
        lacking = [(t, n) for t, n in held.most_common() if t not in vocab][:missing]
    curve = []
    if growth:
        seen, marks = set(), {1000, 2000, 4000, 8000, 12000, 16000, 24000, len(prompts)}
        for k, w in enumerate(tok.words, 1):
            seen.update(w)
            if k in marks:
                curve.append((k, len(seen)))
    return row, lacking, curve


def markdown_table(rows):
    keys = list(rows[0])
    lines = ["| | " + " | ".join(str(r["corpus"]) for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for k in keys[1:]:
        lines.append(f"| {k} | " + " | ".join(str(r.get(k, "")) for r in rows) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpora", nargs="+", help="caption files, one prompt per line")
    parser.add_argument("--heldout", default=DEFAULT_HELDOUT, help="held-out prompt file ('' to skip coverage)")
    parser.add_argument("--growth", action="store_true", help="distinct tokens after the first 1k, 2k, 4k ... prompts")
    parser.add_argument("--missing", type=int, default=25, help="how many uncovered held-out tokens to list")
    parser.add_argument("--rate", type=float, nargs=2, default=SEQUENCES_PER_SECOND, metavar=("SLOW", "FAST"),
                        help="text-encoder sequences per second for the time estimate")
    parser.add_argument("--out", default="", help="also write the report (markdown) to this file")
    args = parser.parse_args()

    tokenizer = comfy_tokenizer()
    inv = tokenizer.clip_l.inv_vocab
    heldout = None
    report = []
    if args.heldout:
        held_prompts = read_lines(args.heldout)
        heldout = Tokenized(tokenizer, held_prompts)
        held_vocab = {t for w in heldout.words for t in w}
        report.append(f"held-out set {args.heldout}: {len(held_prompts)} prompts, "
                      f"{sum(len(w) for w in heldout.words)} word tokens, {len(held_vocab)} distinct, "
                      f"{sum(len(c) for c in heldout.chunks)} chunks")
    rows, extras = [], []
    for path in args.corpora:
        prompts = read_lines(path)
        row, lacking, curve = corpus_stats(path, prompts, Tokenized(tokenizer, prompts), heldout,
                                           args.growth, args.missing, tuple(args.rate))
        rows.append(row)
        if lacking:
            extras.append(f"held-out tokens missing from {row['corpus']} (occurrences): "
                          + ", ".join(f"{inv[t].replace('</w>', '')}({n})" for t, n in lacking))
        if curve:
            extras.append(f"distinct tokens vs prompts, {row['corpus']}: "
                          + ", ".join(f"{k}: {v}" for k, v in curve))
    report += ["", markdown_table(rows), ""] + extras
    text = "\n".join(report)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
