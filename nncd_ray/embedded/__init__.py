"""The small language model shipped inside the package (``model/``; see ``MODEL_CARD.md``).

``nncd_ray.scorers.lm.loading.load_causal_lm(None, ...)`` loads it; :func:`model_dir` only locates
its files, without importing torch.
"""

from __future__ import annotations

from pathlib import Path


def model_dir() -> Path:
    """Directory holding config.json, model.safetensors and the tokenizer files."""
    return Path(__file__).resolve().parent / "model"
