"""The small language model shipped inside the package (``model/``; see ``MODEL_CARD.md``).

``nncd_ray.scorers.lm.loading.load_causal_lm(None, ...)`` loads it; these helpers only locate its
files and read how it was made, without importing torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nncd_ray.errors import ModelNotFound


def model_dir() -> Path:
    """Directory holding config.json, model.safetensors and the tokenizer files."""
    return Path(__file__).resolve().parent / "model"


def model_card() -> Path:
    """The model card: architecture, data, training command, measured bits per byte."""
    return Path(__file__).resolve().parent / "MODEL_CARD.md"


def training_record() -> dict[str, Any]:
    """``model/training.json``: the training config, book cuts, token counts and wall time."""
    path = model_dir() / "training.json"
    if not path.exists():
        raise ModelNotFound(f"the embedded model has no training record at {path}")
    record: dict[str, Any] = json.loads(path.read_text())
    return record
