"""The embedded model's architecture: a Llama decoder sized by :class:`ModelShape`; saving it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from nncd_ray.errors import ConfigError

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

    from nncd_ray.training.config import ModelShape, StorageDtype


def build_model(
    shape: ModelShape, tokenizer: PreTrainedTokenizerFast, *, attention: str = "sdpa"
) -> LlamaForCausalLM:
    """A freshly initialised Llama decoder sized by ``shape`` (call after ``torch.manual_seed``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape.hidden_size % shape.num_heads:
        raise ConfigError("hidden_size must be divisible by num_heads")
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_heads,
        "max_position_embeddings": shape.context_tokens,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "attn_implementation": attention,
    }
    config = LlamaConfig(**settings)
    return LlamaForCausalLM(config)


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: Path,
    storage_dtype: StorageDtype,
) -> None:
    """``save_pretrained`` both, weights cast to ``storage_dtype`` (safetensors)."""
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    # torch.nn.Module.to: transformers wraps PreTrainedModel.to with a signature mypy misreads
    torch.nn.Module.to(model, dtypes[storage_dtype])
    model.save_pretrained(str(out_dir))
    torch.nn.Module.to(model, torch.float32)
    tokenizer.save_pretrained(str(out_dir))
