"""What a training run depends on: :class:`TrainConfig` (with :class:`ModelShape`), and what it
returns, :class:`TrainResult`. Same config and thread count -> same weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nncd_ray.training.documents import DocumentMix

StorageDtype = Literal["fp32", "fp16", "bf16"]
# "documents": [b] d1 [e] d2 [e] ... of paragraph groups (nncd_ray.training.documents);
# "stream": windows of the books concatenated, one [e] per book (the first shipped model's recipe)
Layout = Literal["documents", "stream"]


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
    # start from weights holding a copy circuit (nncd_ray.training.copy_circuit)
    copy_circuit: bool = False
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


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    out_dir: Path
    parameters: int
    train_tokens: int  # tokens in the training stream (one epoch)
    tokens_seen: int  # tokens trained on (steps x batch x context)
    wall_seconds: float
    final_loss_nats: float  # mean training loss of the last step, nats per token
