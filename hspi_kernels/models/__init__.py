"""Model-level platform inference: full models (Hugging Face transformers LLMs built from configs
with seeded weights, ResNet-18 / MobileNet-V2 vision nets) run under equivalence classes of
inference configurations (EQCs: hardware × dtype × attention × GEMM backend × batch × compile ×
low-precision kernels), their outputs collected bit-exactly, and three ways to tell platforms apart:

- ``hspi_ld``   HSPI-LD (arXiv 2411.05197): linear SVM on the sign/exponent/fraction bits of fp32
                log-probs, next to a classifier on our native bit features;
- ``hspi_bi``   HSPI-BI: border inputs (LLM token search, vision PGD) whose top-1 differs by EQC;
- ``matching``  exact identification: white-box bit matching against regenerated candidate
                outputs, and a black-box test on rounded top-k log-probs (an OpenAI-style API).

Data flow: ``zoo`` (build a model) → ``eqc`` (configure a run) → ``collect`` (run prompts, store a
compressed collection with platform metadata) → ``hspi_ld`` / ``hspi_bi`` / ``matching``.
Nothing here imports torch, transformers or scikit-learn at package import time.
"""

from __future__ import annotations

__all__ = ["zoo", "eqc", "prompts", "collect", "hspi_ld", "hspi_bi", "matching", "plots"]
