"""Fixed, regenerable prompt sets: every prompt of a set has the same length, so batching never
needs padding (padding would change the kernels and mix two effects).

- ``random``: token ids uniform in [3, vocab) from numpy PCG64 seeded by (seed, set index);
- ``text``:   the shipped natural-text sentences (``data/prompts.txt``) tokenised by the model's
  own tokenizer when a local checkpoint has one, else byte-level (id = 3 + UTF-8 byte, the
  layout of byte-level BPE's base vocabulary), cut / repeated to the set's length;
- vision ``images``: seeded standard-normal images (N, 3, H, W), fp32.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = ["texts", "random_tokens", "text_tokens", "prompt_sets", "images"]


def texts() -> list[str]:
    data = resources.files("hspi_kernels.models").joinpath("data/prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in data.splitlines() if line.strip()]


def random_tokens(n: int, length: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, 1])
    return rng.integers(3, vocab_size, size=(n, length), dtype=np.int64).astype(np.int32)


def text_tokens(n: int, length: int, vocab_size: int, tokenizer=None) -> np.ndarray:
    sentences = texts()
    rows = []
    for i in range(n):
        text = sentences[i % len(sentences)]
        if i >= len(sentences):  # more prompts than sentences: start at a later word
            words = text.split()
            text = " ".join(words[(i // len(sentences)) % len(words):] + words)
        ids = list(tokenizer.encode(text)) if tokenizer is not None else [3 + b for b in text.encode("utf-8")]
        while len(ids) < length:
            ids = ids + ids
        rows.append([t % vocab_size for t in ids[:length]])
    return np.asarray(rows, dtype=np.int32)


def prompt_sets(vocab_size: int, n_random: int, n_text: int, length: int, seed: int = 0,
                tokenizer=None) -> dict[str, np.ndarray]:
    """{"random": int32 [n_random, length], "text": int32 [n_text, length]} (empty sets omitted)."""
    sets = {}
    if n_random:
        sets["random"] = random_tokens(n_random, length, vocab_size, seed)
    if n_text:
        sets["text"] = text_tokens(n_text, length, vocab_size, tokenizer)
    return sets


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, 2])
    return rng.standard_normal((n, 3, size, size), dtype=np.float32)
