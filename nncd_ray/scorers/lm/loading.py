"""Loading a causal language model and its tokenizer: local directory, hub id, or the embedded one.

No download ever happens implicitly in tests or on the default path: ``model=None`` means the model
shipped inside the package. A hub id is loaded with the normal Hugging Face cache (users have
network); ``HF_HUB_OFFLINE=1`` is respected and a failure becomes :class:`ModelNotFound`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nncd_ray.errors import ConfigError, ModelNotFound

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    # what identifies the weights: local path + content hash, or hub id + revision
    fingerprint: dict[str, Any]
    bos_id: int
    eos_id: int
    # positions the model can attend over (n_positions / max_position_embeddings)
    context_tokens: int
    parameters: int


def embedded_model_dir() -> Path:
    """Directory of the model shipped inside the package."""
    from nncd_ray.embedded import model_dir

    return model_dir()


def weights_hash(directory: Path) -> str:
    """sha256 over the model's weight and config files (names and bytes), hex, first 16 digits."""
    digest = hashlib.sha256()
    patterns = ("*.safetensors", "*.bin", "config.json", "tokenizer.json", "tokenizer_config.json")
    files = sorted({f for pattern in patterns for f in directory.glob(pattern)})
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def resolve_model_source(model: str | None) -> tuple[str, bool]:
    """(path or hub id, is_local). ``None`` is the embedded model."""
    if model is None or model == "embedded":
        directory = embedded_model_dir()
        if not (directory / "config.json").exists():
            raise ModelNotFound(
                f"the embedded model is missing from {directory}; "
                "reinstall nncd_ray or pass --model"
            )
        return str(directory), True
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{path} has no config.json; is it a saved Hugging Face model?")
        return str(path.resolve()), True
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if looks_like_path:
        raise ModelNotFound(f"model path {model!r} does not exist")
    return model, False


def context_length(config: Any) -> int:
    for attr in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ConfigError(f"cannot tell the context length of model type {config.model_type!r}")


def load_causal_lm(
    model: str | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load once (per actor); eval mode, SDPA attention where the architecture has it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # our own progress bars report the work; transformers' per-load bar is noise on stderr
    hf_logging.disable_progress_bar()

    source, local = resolve_model_source(model)
    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if local:
        common["local_files_only"] = True
    elif revision is not None:
        common["revision"] = revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        try:
            lm = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, attn_implementation="sdpa", **common
            )
        except (ValueError, ImportError):  # architectures without SDPA support
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **common)
    except OSError as exc:
        raise ModelNotFound(f"cannot load model {source!r}: {str(exc).splitlines()[0]}") from exc
    lm.to(device)  # type: ignore[arg-type]  # transformers types .to() through a wrapper
    lm.eval()
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        eos_id = getattr(lm.config, "eos_token_id", None)
    if isinstance(eos_id, list):
        eos_id = eos_id[0]
    if eos_id is None:
        raise ConfigError(f"model {source!r} has no EOS token; the pair code needs one")
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        bos_id = eos_id  # DESIGN.md §2: EOS where the model has no BOS
    if local:
        fingerprint = {
            "model": "embedded" if source == str(embedded_model_dir()) else source,
            "weights_sha256": weights_hash(Path(source)),
        }
    else:
        fingerprint = {
            "model": source,
            "revision": revision or getattr(lm.config, "_commit_hash", None) or "main",
        }
    fingerprint["dtype"] = str(dtype).removeprefix("torch.")
    return LoadedModel(
        model=lm,
        tokenizer=tokenizer,
        fingerprint=fingerprint,
        bos_id=int(bos_id),
        eos_id=int(eos_id),
        context_tokens=context_length(lm.config),
        parameters=sum(p.numel() for p in lm.parameters()),
    )


def cache_argument(model: Any) -> str:
    """The ``forward`` keyword that takes a KV cache: ``cache`` since transformers 5.24, which
    deprecates ``past_key_values`` (removed in 5.40); ``past_key_values`` before."""
    import inspect

    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache a forward pass returned (``output.cache`` since transformers 5.24,
    ``output.past_key_values`` before); ``None`` without one."""
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else getattr(output, "past_key_values", None)
