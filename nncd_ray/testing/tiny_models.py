"""Small Hugging Face causal LMs built locally, with no network: for tests and benchmarks.

Nothing here downloads anything. A byte-level BPE tokenizer is trained with ``tokenizers`` on the
texts given, a GPT-2 or Llama model is built from its config with deterministic random weights, and
both are written with ``save_pretrained`` (safetensors), so ``AutoTokenizer`` /
``AutoModelForCausalLM`` (and :func:`nncd_ray.scorers.lm.loading.load_causal_lm`) load the
directory like any saved model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from nncd_ray.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

Architecture = Literal["gpt2", "llama"]

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

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


def byte_level_bpe(lines: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with BOS, EOS and PAD special tokens on ``lines`` as given.

    Byte-level means every UTF-8 string is encodable (the 256 byte symbols are always in the
    vocabulary), so ``vocab_size`` must be at least 259. The tokenizer adds no special tokens on
    its own: the scorer places BOS/EOS explicitly (DESIGN.md §2). Shared by the tiny test models
    and the embedded model's training recipe.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise ConfigError(
            f"vocab_size {vocab_size} is too small for a byte-level BPE "
            f"(needs at least {len(alphabet) + len(specials)})"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1 << 30,
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


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: Architecture = "gpt2",
    vocab_size: int = 512,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 256,
    seed: int = 0,
    tokenizer_texts: Iterable[str] | None = None,
    intermediate_size: int | None = None,
    activation: str | None = None,
) -> Path:
    """Build a randomly initialised causal LM plus its tokenizer in ``out_dir``; return the path.

    ``n_embd`` is the hidden size (``hidden_size`` for Llama), ``n_positions`` the context length in
    tokens. Weights come from ``torch.manual_seed(seed)``, so the same arguments give the same
    files. The model's vocabulary is the tokenizer's actual size (BPE may learn fewer merges than
    asked for on small texts). ``intermediate_size`` is the MLP width (default 4 × ``n_embd``);
    ``activation`` a transformers activation name (default: the architecture's own, ``gelu_new``
    for GPT-2, ``silu`` for Llama; ``gelu_pytorch_tanh`` is the same function as one fused kernel).
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig

    if n_embd % n_head != 0:
        raise ConfigError(f"n_embd {n_embd} must be divisible by n_head {n_head}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = list(tokenizer_texts) if tokenizer_texts is not None else list(FALLBACK_TEXT)
    tokenizer = train_bpe_tokenizer(texts, vocab_size, out)
    vocab = len(tokenizer)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config: PretrainedConfig
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=n_positions,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_inner=intermediate_size,
            activation_function=activation or "gelu_new",
            **ids,
        )
    elif arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=n_embd,
            intermediate_size=intermediate_size or 4 * n_embd,
            num_hidden_layers=n_layer,
            num_attention_heads=n_head,
            num_key_value_heads=max(1, n_head // 2),  # grouped-query attention, as in real Llamas
            max_position_embeddings=n_positions,
            tie_word_embeddings=False,
            hidden_act=activation or "silu",
            **ids,
        )
    else:
        raise ConfigError(f"unknown architecture {arch!r}; choose 'gpt2' or 'llama'")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(out))
    return out


__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "FALLBACK_TEXT",
    "PAD_TOKEN",
    "build_tiny_model",
    "read_text_lines",
    "train_bpe_tokenizer",
]
