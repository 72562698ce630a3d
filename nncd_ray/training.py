"""Training the embedded language model: data split, tokenizer, model config and training loop.

The model that ships in ``nncd_ray/embedded/model/`` is made by :func:`train_language_model` from
the Gutenberg books in ``../shared/data/gutenberg``. Every book is split by bytes: the first 95%
(cut moved back to a UTF-8 character boundary, so the held-out part is never smaller than 5%) is
the only text the tokenizer and the model ever see; the rest is the held-out test text that
:mod:`nncd_ray.lm_eval` scores. Nothing from AG News is used for training or tuning.

A run is a pure function of its :class:`TrainConfig`: the schedule counts steps (never time), the
data order comes from a seeded ``numpy`` generator, the weights from ``torch.manual_seed``, and the
data preparation runs on one thread. Two runs with the same config and thread count give identical
weights.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from nncd_ray.errors import ConfigError, DatasetNotFound
from nncd_ray.testing.tiny_models import byte_level_bpe
from nncd_ray.training_docs import (
    IGNORE_INDEX,
    DocumentMix,
    build_documents,
    document_sequences,
    split_window,
)

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast


StorageDtype = Literal["fp32", "fp16", "bf16"]
# "documents": [b] d1 [e] d2 [e] ... of paragraph groups (nncd_ray.training_docs);
# "stream": windows of the books concatenated, one [e] per book (the first shipped model's recipe)
Layout = Literal["documents", "stream"]


@dataclass(frozen=True, kw_only=True)
class BookSplit:
    """One book cut by bytes: ``train`` is bytes [0, cut), ``heldout`` is bytes [cut, end)."""

    name: str
    train: str
    heldout: str
    cut_byte: int  # first held-out byte offset in the UTF-8 file
    total_bytes: int


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """Llama-style decoder (RoPE, RMSNorm, SwiGLU), tied input/output embeddings."""

    hidden_size: int = 256  # width of the residual stream
    intermediate_size: int = 688  # SwiGLU inner width (~8/3 x hidden)
    num_layers: int = 4
    num_heads: int = 4  # head dimension = hidden_size / num_heads
    context_tokens: int = 512  # positions trained on (= max_position_embeddings)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run depends on; same config + thread count -> same weights."""

    data_dir: Path  # folder of UTF-8 books (*.txt); read in sorted file-name order
    out_dir: Path  # where the model, tokenizer, train_log.jsonl and training.json go
    vocab_size: int = 4096  # byte-level BPE vocabulary including the 3 special tokens
    shape: ModelShape = field(default_factory=ModelShape)
    layout: Layout = "documents"  # how training sequences are made from the books
    copy_circuit: bool = False  # start from weights holding a copy circuit (nncd_ray.copy_circuit)
    mix: DocumentMix = field(default_factory=DocumentMix)  # the "documents" layout's settings
    steps: int = 600  # optimizer steps (the schedule is step-based, never time-based)
    batch_size: int = 8  # sequences per step; tokens per step = batch_size x context_tokens
    peak_lr: float = 2e-3
    min_lr_ratio: float = 0.05  # the decay ends at peak_lr x this
    warmup_steps: int = 30
    decay_fraction: float = 0.25  # last fraction of the steps decays linearly (WSD schedule)
    weight_decay: float = 0.1  # on 2-D weight matrices only
    # dropout on the output of every attention and MLP block before it joins the residual stream,
    # while training only (forward hooks; the saved model is a plain Llama without dropout)
    dropout: float = 0.0
    embedding_lr_scale: float = 1.0  # the (tied) embedding learns at this x the schedule's rate
    # An optional early phase that keeps a seeded copy circuit alive while the loss comes to rely
    # on it: the first ``early_steps`` run at ``early_lr`` with the embedding at
    # ``early_embedding_lr_scale``; both then move linearly to ``peak_lr`` / ``embedding_lr_scale``
    # over ``ramp_steps``. ``early_steps = 0`` turns the phase off.
    early_steps: int = 0
    early_lr: float = 5e-4
    early_embedding_lr_scale: float = 0.1
    ramp_steps: int = 100
    # pin the copy circuit's weights from the end of the early phase on (CircuitLock)
    lock_circuit: bool = False
    grad_clip: float = 1.0
    seed: int = 0
    holdout_fraction: float = 0.05  # last fraction of every book's bytes, never trained on
    threads: int = 2  # torch intra-op threads
    bf16_autocast: bool = True  # bf16 matmuls in the forward pass; fp32 master weights and loss
    # torch.compile the forward pass and loss (and so, through AOTAutograd, the backward) with
    # eager attention, which inductor fuses: about 1.5x the steps per second on the project's CPU.
    # Deterministic run to run (deterministic algorithms on while training), but not bit-identical
    # to an uncompiled run: the fused kernels round bf16 elsewhere.
    compile: bool = False
    storage_dtype: StorageDtype = "fp32"  # dtype of the saved safetensors
    log_every: int = 1  # JSON line every this many steps
    checkpoint_every: int = 0  # save out_dir/checkpoint.pt every this many steps (0: never)
    resume: bool = False  # continue from out_dir/checkpoint.pt (bit-identical to a fresh run)
    progress: bool = True  # tqdm bar
    max_books: int | None = None  # first N books only; the rest stay unseen (bench.unseen_books)
    # first N characters of each training part only (tests; probes of many passes over less text)
    max_train_bytes_per_book: int | None = None


def split_book(data: bytes, holdout_fraction: float) -> tuple[int, str, str]:
    """(cut, train text, held-out text) for one UTF-8 book.

    ``cut = floor(len * (1 - holdout_fraction))``, moved back while it falls inside a multi-byte
    character; train = bytes[:cut], held-out = bytes[cut:], so the two never share a byte.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ConfigError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    cut = int(len(data) * (1.0 - holdout_fraction))
    while 0 < cut < len(data) and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut, data[:cut].decode("utf-8"), data[cut:].decode("utf-8")


def load_books(
    data_dir: Path, holdout_fraction: float = 0.05, max_books: int | None = None
) -> list[BookSplit]:
    """Every ``*.txt`` in ``data_dir`` (sorted by name), split into training and held-out text."""
    paths = sorted(Path(data_dir).glob("*.txt"))
    if not paths:
        raise DatasetNotFound(f"no *.txt books in {data_dir}; pass --data-dir")
    books = []
    for path in paths[:max_books]:
        data = path.read_bytes()
        cut, train, heldout = split_book(data, holdout_fraction)
        books.append(
            BookSplit(
                name=path.stem, train=train, heldout=heldout, cut_byte=cut, total_bytes=len(data)
            )
        )
    return books


def _single_threaded_tokenizers() -> None:
    # the Rust side of `tokenizers` parallelises with rayon; one thread keeps data prep serial
    os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 pre-tokenisation) with BOS, EOS and PAD; adds no special tokens itself.

    Byte-level: the 256 byte symbols are always in the vocabulary, so every string is encodable.
    The texts are fed paragraph by paragraph in the order given.
    """
    _single_threaded_tokenizers()

    def paragraphs() -> Iterator[str]:
        for text in texts:
            yield from (p for p in text.split("\n\n") if p)

    return byte_level_bpe(paragraphs(), vocab_size)


def encode_stream(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> np.ndarray:
    """``ids(t) + [eos]`` for every text, concatenated: (n_tokens,) int64."""
    eos = tokenizer.eos_token_id
    parts = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        parts.append(np.asarray([*ids, eos], dtype=np.int64))
    return np.concatenate(parts)


def token_byte_lengths(tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """UTF-8 bytes each token id stands for, (vocab,) int64; special tokens count 0."""
    from tokenizers import pre_tokenizers

    # byte-level BPE spells each byte with one printable character; the alphabet has 256 of them
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    lengths = np.zeros(len(tokenizer), dtype=np.int64)
    specials = set(tokenizer.all_special_ids)
    for token, index in tokenizer.get_vocab().items():
        if index not in specials:
            lengths[index] = sum(1 for ch in token if ch in alphabet)
    return lengths


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


def _check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), not {p}")


def add_residual_dropout(model: LlamaForCausalLM, p: float) -> list[Any]:
    """Dropout with probability ``p`` on the output of every decoder layer's attention and MLP
    block, in training mode only, as forward hooks (Llama has no residual dropout of its own);
    the state dict, and so the saved model, is unchanged. Returns the hook handles."""
    import torch

    _check_dropout(p)
    if p == 0.0:
        return []

    def drop(module: torch.nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):  # attention: (hidden states, attention weights)
            return (torch.nn.functional.dropout(output[0], p, module.training), *output[1:])
        return torch.nn.functional.dropout(output, p, module.training)

    handles = []
    for layer in model.model.layers:
        handles.append(layer.self_attn.register_forward_hook(drop))
        handles.append(layer.mlp.register_forward_hook(drop))
    return handles


def compiler_available() -> bool:
    """Whether torch.compile's CPU backend (inductor, C++ code) finds a compiler to build with."""
    import shutil

    candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return any(name and shutil.which(name) for name in candidates)


@contextmanager
def _deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` and inductor's ``deterministic`` mode inside,
    the previous settings restored after.

    A compiled backward otherwise sums the embedding's gradient with parallel atomic adds, whose
    order (and so rounding) changes from call to call, and inductor may choose kernels by timing
    them; eager CPU kernels need no help. The training loop compiles on its first step, inside."""
    import torch
    import torch._inductor.config as inductor_config

    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with inductor_config.patch(deterministic=True):
            yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _loss_function(
    model: LlamaForCausalLM, config: TrainConfig
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(inputs, targets) -> mean cross-entropy in nats`` over the targets that are not
    :data:`IGNORE_INDEX`: bf16 autocast matmuls (``bf16_autocast``), float32 log-softmax;
    ``torch.compile``-d when ``config.compile``."""
    import torch

    def batch_loss(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16_autocast):
            logits = model(input_ids=inputs).logits
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
        )

    if not config.compile:
        return batch_loss
    # deterministic only when called inside _deterministic_algorithms(True), as the loop does
    compiled: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.compile(
        batch_loss, dynamic=False
    )
    return compiled


def batch_order(n_tokens: int, context: int, seed: int) -> Iterator[np.ndarray]:
    """Start offsets of training windows, one epoch at a time: (n_windows,) int64 each.

    The stream is cut into non-overlapping windows of ``context`` target tokens; each epoch shifts
    the grid by a seeded offset and shuffles the windows with a seeded permutation.
    """
    rng = np.random.default_rng(seed)
    if n_tokens < context + 1:
        raise ConfigError(f"only {n_tokens} training tokens; need more than {context}")
    while True:
        shift = int(rng.integers(0, context))
        starts = np.arange(shift, n_tokens - context + 1, context, dtype=np.int64)
        yield starts[rng.permutation(len(starts))]


def _phase(step: int, config: TrainConfig) -> float:
    """How far ``step`` is from the early phase (0) to the main one (1)."""
    if config.early_steps <= 0:
        return 1.0
    if step < config.early_steps:
        return 0.0
    return min(1.0, (step - config.early_steps + 1) / config.ramp_steps)


def _decay_start(config: TrainConfig) -> int:
    """The first step of the linear decay (the last ``decay_fraction`` of the steps)."""
    return config.steps - max(1, round(config.steps * config.decay_fraction))


def learning_rate(step: int, config: TrainConfig) -> float:
    """Warmup-stable-decay: linear warmup, constant ``peak_lr``, linear decay over the last
    ``decay_fraction`` of the steps to ``peak_lr * min_lr_ratio``. With ``early_steps`` the
    warmup and the stable part start at ``early_lr`` and ramp to ``peak_lr`` after the early phase.

    Before the decay starts the rate does not depend on ``steps``, so a run checkpointed there can
    be resumed with a different ``steps`` and still equal a fresh run with that ``steps``.
    """
    phase = _phase(step, config)
    stable = config.peak_lr  # exactly, once (or where) there is no early phase
    if phase < 1.0:
        stable = config.early_lr + (config.peak_lr - config.early_lr) * phase
    if step < config.warmup_steps:
        return stable * (step + 1) / config.warmup_steps
    decay_start = _decay_start(config)
    if step < decay_start:
        return stable
    progress = (step - decay_start + 1) / (config.steps - decay_start)
    return config.peak_lr * (1.0 - (1.0 - config.min_lr_ratio) * progress)


def embedding_lr_scale(step: int, config: TrainConfig) -> float:
    """The embedding's multiple of :func:`learning_rate` at ``step``."""
    early, late = config.early_embedding_lr_scale, config.embedding_lr_scale
    return early + (late - early) * _phase(step, config)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on 2-D weights except the embedding, which has its own learning rate
    (:func:`embedding_lr_scale` x the schedule's rate, set by ``_set_learning_rate``)."""
    import torch

    named = list(model.named_parameters())
    embed = [p for n, p in named if "embed" in n]
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in named if p.ndim < 2 and "embed" not in n]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay, "embedding": False},
        {"params": other, "weight_decay": 0.0, "embedding": False},
        {"params": embed, "weight_decay": 0.0, "embedding": True},
    ]
    return torch.optim.AdamW(groups, lr=config.peak_lr, betas=(0.9, 0.95), eps=1e-8)


def _set_learning_rate(optimizer: torch.optim.Optimizer, step: int, config: TrainConfig) -> float:
    lr = learning_rate(step, config)
    embedding_scale = embedding_lr_scale(step, config)
    for group in optimizer.param_groups:
        group["lr"] = lr * (embedding_scale if group["embedding"] else 1.0)
    return lr


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    out_dir: Path
    parameters: int
    train_tokens: int  # tokens in the training stream (one epoch)
    tokens_seen: int  # tokens trained on (steps x batch x context)
    wall_seconds: float
    final_loss_nats: float  # mean training loss of the last step, nats per token


def prepare_data(config: TrainConfig) -> tuple[list[BookSplit], PreTrainedTokenizerFast, Any]:
    """Books, the tokenizer trained on their training parts, and the training token stream."""
    books = load_books(config.data_dir, config.holdout_fraction, config.max_books)
    texts = training_texts(books, config)
    tokenizer = train_tokenizer(texts, config.vocab_size)
    return books, tokenizer, encode_stream(tokenizer, texts)


def training_texts(books: Sequence[BookSplit], config: TrainConfig) -> list[str]:
    """The part of every book that is trained on (cut to ``max_train_bytes_per_book`` if set)."""
    limit = config.max_train_bytes_per_book
    return [b.train if limit is None else b.train[:limit] for b in books]


def training_windows(
    config: TrainConfig,
    tokenizer: PreTrainedTokenizerFast,
    books: Sequence[BookSplit],
    stream: np.ndarray,
) -> Iterator[np.ndarray]:
    """Endless ``(context,)`` int64 target windows in training order (each is fed after ``[b]``)."""
    context = config.shape.context_tokens
    if config.layout == "stream":
        return (
            stream[s : s + context]
            for epoch in batch_order(len(stream), context, config.seed)
            for s in epoch
        )
    if config.layout != "documents":
        raise ConfigError(f"unknown layout {config.layout!r}; choose documents or stream")
    docs = build_documents(tokenizer, training_texts(books, config), config.mix, config.seed)
    # noise spans draw from the learned symbols, never from the special tokens
    first_plain = 1 + max(int(i) for i in tokenizer.all_special_ids)
    return document_sequences(
        docs,
        context,
        int(tokenizer.eos_token_id),
        config.mix,
        config.seed,
        noise_tokens=(first_plain, len(tokenizer)),
    )


def train_language_model(config: TrainConfig) -> TrainResult:
    """Train, then save model (safetensors), tokenizer, ``training.json`` into ``config.out_dir``.

    Writes one JSON line per ``log_every`` steps to ``out_dir/train_log.jsonl``: step, lr,
    loss (nats/token), bpb (bits per UTF-8 byte of the batch's targets), tokens seen, seconds.
    """
    import torch

    from nncd_ray.copy_circuit import CircuitLock, seed_copy_circuit  # imports torch

    if config.steps < 1 or config.batch_size < 1:
        raise ConfigError("steps and batch_size must be positive")
    _check_dropout(config.dropout)  # before the data is read, not when the model is built
    if config.max_books is not None and config.max_books < 1:
        raise ConfigError(f"max_books must be at least 1, not {config.max_books}")
    if config.embedding_lr_scale < 0 or config.early_embedding_lr_scale < 0:
        raise ConfigError("embedding_lr_scale and early_embedding_lr_scale must be zero or more")
    if config.lock_circuit and not config.copy_circuit:
        raise ConfigError("lock_circuit needs copy_circuit")
    if config.early_steps < 0 or config.ramp_steps < 1:
        raise ConfigError("early_steps must be zero or more and ramp_steps positive")
    decay_start = _decay_start(config)
    if config.early_steps and config.early_steps + config.ramp_steps > decay_start:
        raise ConfigError(
            f"early_steps + ramp_steps = {config.early_steps + config.ramp_steps} runs into the "
            f"decay, which starts at step {decay_start}"
        )
    if config.compile and not compiler_available():
        raise ConfigError("--compile needs a C++ compiler (g++, c++ or clang++, or $CXX) on PATH")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    books, tokenizer, stream = prepare_data(config)
    byte_len = torch.from_numpy(token_byte_lengths(tokenizer))
    torch.manual_seed(config.seed)
    # compiled, plain attention fuses into fewer kernels than SDPA's flash path (the attention
    # implementation is not saved with the model: it loads with the loader's choice)
    model = build_model(config.shape, tokenizer, attention="eager" if config.compile else "sdpa")
    if config.copy_circuit:
        seed_copy_circuit(model)
    add_residual_dropout(model, config.dropout)
    model.train()
    optimizer = _optimizer(model, config)
    context = config.shape.context_tokens
    bos = int(tokenizer.bos_token_id)
    checkpoint = out / "checkpoint.pt"
    first_step, elapsed_before = 0, 0.0
    if config.resume:
        first_step, elapsed_before = load_checkpoint(checkpoint, model, optimizer, config)
    started -= elapsed_before
    windows = training_windows(config, tokenizer, books, stream)
    for _ in range(first_step * config.batch_size):  # the windows the checkpoint already saw
        next(windows)
    batch_loss = _loss_function(model, config)
    log_path = out / "train_log.jsonl"
    _truncate_log(log_path, first_step)
    bar = _progress(config, first_step)
    loss_value = float("nan")
    lock = None
    with _deterministic_algorithms(config.compile), log_path.open("a") as log:
        for step in range(first_step, config.steps):
            if config.lock_circuit and lock is None and step >= config.early_steps:
                lock = CircuitLock(model)  # a resumed run re-reads the same, restored values
            lr = _set_learning_rate(optimizer, step, config)
            window = np.stack([next(windows) for _ in range(config.batch_size)])
            tokens_np, targets_np = split_window(window)
            tokens, targets = torch.from_numpy(tokens_np), torch.from_numpy(targets_np)
            inputs = torch.cat([torch.full((len(tokens), 1), bos), tokens[:, :-1]], dim=1)
            loss = batch_loss(inputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if lock is not None:
                lock.restore()
            loss_value = loss.item()
            scored = targets[targets != IGNORE_INDEX]
            batch_bytes = int(byte_len[scored].sum())
            bpb = loss_value * scored.numel() / math.log(2) / max(1, batch_bytes)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", bpb=f"{bpb:.3f}")
            done = step + 1
            elapsed = time.perf_counter() - started
            if done % config.log_every == 0 or done == config.steps:
                record = {
                    "step": done,
                    "lr": lr,
                    "loss_nats": round(loss_value, 5),
                    "bpb": round(bpb, 5),
                    "tokens_seen": done * targets.numel(),
                    "elapsed_s": round(elapsed, 2),
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                save_checkpoint(checkpoint, model, optimizer, config, done, elapsed)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    save_model(model, tokenizer, out, config.storage_dtype)
    meta = {
        "config": _jsonable(asdict(config)),
        "books": [{"name": b.name, "bytes": b.total_bytes, "cut_byte": b.cut_byte} for b in books],
        "train_tokens": len(stream),
        "train_bytes": sum(len(b.train.encode()) for b in books),
        "parameters": parameters,
        "wall_seconds": round(wall, 1),
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return TrainResult(
        out_dir=out,
        parameters=parameters,
        train_tokens=len(stream),
        tokens_seen=config.steps * config.batch_size * context,
        wall_seconds=wall,
        final_loss_nats=loss_value,
    )


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


def _progress(config: TrainConfig, first_step: int) -> Any:
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=first_step, desc="train", unit="step")


def _truncate_log(path: Path, keep_steps: int) -> None:
    """Keep the log lines of steps <= ``keep_steps`` (all gone when starting afresh)."""
    kept = []
    if keep_steps and path.exists():
        kept = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= keep_steps]
    path.write_text("".join(ln + "\n" for ln in kept))


# fields that may differ between a checkpointed run and the run that resumes it
_RESUMABLE_CHANGES = frozenset(
    {"out_dir", "steps", "log_every", "checkpoint_every", "progress", "resume", "storage_dtype"}
)


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    step: int,
    elapsed: float,
) -> None:
    """Model and optimizer state after ``step`` steps (written to a temporary file, renamed)."""
    import torch

    state = {
        "step": step,
        "elapsed_s": elapsed,
        "config": _jsonable(asdict(config)),
        "learning_rates": [learning_rate(s, config) for s in range(step)],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),  # dropout's masks continue where they were
    }
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig
) -> tuple[int, float]:
    """Restore a checkpoint into ``model``/``optimizer``; (steps done, seconds spent).

    Refuses one made with another recipe, or whose steps so far would have had other learning
    rates under ``config`` (a resumed run must equal a fresh run with the same config).
    """
    import torch

    if not path.exists():
        raise ConfigError(f"nothing to resume: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False)
    mine = _jsonable(asdict(config))
    theirs = state["config"]
    # a setting added after the checkpoint was written counts as its default then
    defaults = {
        f.name: _jsonable(f.default) for f in fields(TrainConfig) if f.default is not MISSING
    }
    changed = sorted(
        k for k in mine if mine[k] != theirs.get(k, defaults.get(k)) and k not in _RESUMABLE_CHANGES
    )
    if changed:
        raise ConfigError(f"checkpoint {path} was made with other settings: {', '.join(changed)}")
    step = int(state["step"])
    if (
        step > config.steps
        or [learning_rate(s, config) for s in range(step)] != state["learning_rates"]
    ):
        raise ConfigError(
            f"checkpoint {path} is at step {step}, past the point where --steps "
            f"{config.steps} changes the schedule; start afresh"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    return step, float(state["elapsed_s"])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value
