"""Small Hugging Face causal LMs built locally, with no network: for tests and benchmarks.

Nothing here downloads anything. A byte-level BPE tokenizer is trained with ``tokenizers`` on the
texts given, a model of one of the tested families is built from its config with deterministic
random weights, and both are written with ``save_pretrained`` (safetensors), so ``AutoTokenizer`` /
``AutoModelForCausalLM`` (and :func:`nncd_ray.scorers.lm.loading.load_causal_lm`) load the
directory like any saved model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nncd_ray.errors import ConfigError
from nncd_ray.training.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, byte_level_bpe

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

Architecture = Literal[
    "gpt2", "llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "gpt_neox", "phi3"
]
# every architecture build_tiny_model can make (the model families the LM scorer is tested on)
ARCHITECTURES: tuple[str, ...] = (
    "gpt2",
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma2",
    "gemma3",
    "gpt_neox",
    "phi3",
)


# used when no training text is given: enough variety for a few hundred merges
FALLBACK_TEXT: tuple[str, ...] = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
    "nothing to do: once or twice she had peeped into the book her sister was reading.",
    "Happy families are all alike; every unhappy family is unhappy in its own way.",
    "Stocks rose on Wall Street today as investors welcomed new figures on jobs and oil prices.",
    "The team won the championship game in overtime after a late goal by the veteran striker.",
    "Scientists announced the launch date of a new space probe to study the outer planets.",
    "0123456789 !?.,;:'\"()[]{}<>-_/\\@#$%^&*+=~`|",
)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """:func:`byte_level_bpe` on the non-blank ``texts`` (a built-in text when there are none),
    saved with ``save_pretrained`` when ``out_dir`` is given."""
    lines = [t for t in texts if t.strip()] or list(FALLBACK_TEXT)
    tokenizer = byte_level_bpe(lines, vocab_size)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def read_text_lines(paths: Sequence[Path], max_lines: int, min_chars: int = 20) -> list[str]:
    """The first ``max_lines`` non-trivial lines across ``paths`` (missing files are skipped)."""
    lines: list[str] = []
    for path in paths:
        if not path.is_file():
            continue
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                line = line.strip()
                if len(line) >= min_chars:
                    lines.append(line)
                    if len(lines) >= max_lines:
                        return lines
    return lines


def model_config(
    arch: str,
    *,
    vocab: int,
    special_ids: dict[str, Any],
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_kv_head: int | None = None,
    n_positions: int,
    intermediate_size: int | None = None,
    activation: str | None = None,
    sliding_window: int | None = None,
) -> PretrainedConfig:
    """A transformers config of architecture ``arch`` (one of :data:`ARCHITECTURES`) with the
    given shape. ``n_kv_head`` defaults to half the heads (grouped-query attention) where the
    architecture has it; ``sliding_window`` applies to every layer of Mistral and Phi-3 and to
    every other layer of Gemma 2 and 3 (sliding, then full), as in the released models."""
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    if n_embd % n_head != 0:
        raise ConfigError(f"n_embd {n_embd} must be divisible by n_head {n_head}")
    inner = intermediate_size or 4 * n_embd
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab,
            n_positions=n_positions,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_inner=intermediate_size,
            activation_function=activation or "gelu_new",
            **special_ids,
        )
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=n_embd,
            intermediate_size=inner,
            num_hidden_layers=n_layer,
            num_attention_heads=n_head,
            max_position_embeddings=n_positions,
            hidden_act=activation or "gelu",
            **special_ids,
        )
    common: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": n_embd,
        "intermediate_size": inner,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        # grouped-query attention, as in the released models
        "num_key_value_heads": n_kv_head or max(1, n_head // 2),
        "max_position_embeddings": n_positions,
        **special_ids,
    }
    if activation is not None:
        common["hidden_act"] = activation
    head_dim = n_embd // n_head
    alternating = ["sliding_attention", "full_attention"] * ((n_layer + 1) // 2)
    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=head_dim)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=sliding_window)
    if arch == "phi3":
        return Phi3Config(**common, sliding_window=sliding_window)
    if arch in ("gemma2", "gemma3"):
        gemma = Gemma2Config if arch == "gemma2" else Gemma3TextConfig
        layer_types = alternating[:n_layer] if sliding_window else ["full_attention"] * n_layer
        return gemma(
            **common,
            head_dim=head_dim,
            sliding_window=sliding_window or n_positions,
            layer_types=layer_types,
        )
    raise ConfigError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: Architecture = "gpt2",
    vocab_size: int = 512,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_kv_head: int | None = None,
    n_positions: int = 256,
    seed: int = 0,
    tokenizer_texts: Iterable[str] | None = None,
    tokenizer_dir: str | Path | None = None,
    intermediate_size: int | None = None,
    activation: str | None = None,
    sliding_window: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> Path:
    """Build a randomly initialised causal LM plus its tokenizer in ``out_dir``; return the path.

    ``n_embd`` is the hidden size, ``n_positions`` the context length in tokens (see
    :func:`model_config` for the architectures and ``sliding_window``). Weights come from
    ``torch.manual_seed(seed)``, so the same arguments give the same files. The tokenizer is
    trained on ``tokenizer_texts`` (or loaded from ``tokenizer_dir``, to share one between
    models), and the model's vocabulary is its actual size (BPE may learn fewer merges than asked
    for on small texts). ``intermediate_size`` is the MLP width (default 4 × ``n_embd``);
    ``activation`` a transformers activation name (default: the architecture's own;
    ``gelu_pytorch_tanh`` is GPT-2's ``gelu_new`` as one fused kernel). ``dtype`` is that of the
    saved weights and ``device`` where they are initialised (a GPU initialises a 1 B-parameter
    model in a second).
    """
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer: PreTrainedTokenizerFast
    if tokenizer_dir is not None:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
        tokenizer.save_pretrained(str(out))
    else:
        texts = list(tokenizer_texts) if tokenizer_texts is not None else list(FALLBACK_TEXT)
        tokenizer = train_bpe_tokenizer(texts, vocab_size, out)
    special_ids = {
        "bos_token_id": int(tokenizer.bos_token_id),
        "eos_token_id": int(tokenizer.eos_token_id),
        "pad_token_id": int(tokenizer.pad_token_id),
    }
    config = model_config(
        arch,
        vocab=len(tokenizer),
        special_ids=special_ids,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_kv_head=n_kv_head,
        n_positions=n_positions,
        intermediate_size=intermediate_size,
        activation=activation,
        sliding_window=sliding_window,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(str(out))
    return out


def meta_model(arch: str, *, vocab: int, dtype: Any = None, **shape: Any) -> Any:
    """An untrained model of :func:`model_config`'s ``arch`` and ``shape`` with weights on the
    meta device (no memory: for what depends on the shape alone); bf16 unless ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(arch, vocab=vocab, special_ids={}, **shape)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.bfloat16)


__all__ = [
    "ARCHITECTURES",
    "BOS_TOKEN",
    "EOS_TOKEN",
    "FALLBACK_TEXT",
    "PAD_TOKEN",
    "build_tiny_model",
    "meta_model",
    "model_config",
    "read_text_lines",
    "train_bpe_tokenizer",
]
