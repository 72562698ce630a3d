"""``nncd train``: train the small embedded language model on Gutenberg books.

The defaults are the recipe of the shipped model (``nncd_ray/embedded/MODEL_CARD.md``); the run is
deterministic given ``--seed`` and ``--threads`` (step-based schedule, seeded data order).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nncd_ray.training.books import DEFAULT_DATA
from nncd_ray.training.config import ModelShape, TrainConfig
from nncd_ray.training.documents import DocumentMix


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Training options (shared by ``nncd train`` and ``jobs/train_lm.py``)."""
    shape = ModelShape()
    base = TrainConfig(data_dir=DEFAULT_DATA, out_dir=Path("."))
    parser.add_argument("--out", required=True, type=Path, help="output model directory")
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA, help="folder of UTF-8 *.txt books"
    )
    parser.add_argument(
        "--max-books",
        type=int,
        metavar="N",
        help="train on the first N books only (sorted by file name); the others stay unseen, for "
        "python -m nncd_ray.bench.unseen_books",
    )
    parser.add_argument("--steps", type=int, default=base.steps, help="optimizer steps")
    parser.add_argument(
        "--batch-size", type=int, default=base.batch_size, help="sequences per step"
    )
    parser.add_argument("--context", type=int, default=shape.context_tokens, help="tokens")
    parser.add_argument("--vocab-size", type=int, default=base.vocab_size)
    parser.add_argument("--hidden-size", type=int, default=shape.hidden_size)
    parser.add_argument("--intermediate-size", type=int, default=shape.intermediate_size)
    parser.add_argument("--layers", type=int, default=shape.num_layers)
    parser.add_argument("--heads", type=int, default=shape.num_heads)
    mix = base.mix
    parser.add_argument(
        "--layout",
        choices=("documents", "stream"),
        default=base.layout,
        help="training sequences: [b] d1 [e] d2 [e] ... of paragraph groups, or windows of the "
        "concatenated books",
    )
    parser.add_argument("--doc-min-tokens", type=int, default=mix.min_tokens)
    parser.add_argument("--doc-max-tokens", type=int, default=mix.max_tokens)
    parser.add_argument(
        "--continue-prob",
        type=float,
        default=mix.continue_prob,
        help="chance that the next document is the next one of the same book",
    )
    parser.add_argument(
        "--repeat-prob",
        type=float,
        default=mix.repeat_prob,
        help="chance that the next document repeats an earlier one of the sequence",
    )
    parser.add_argument(
        "--unwrap-prob",
        type=float,
        default=mix.unwrap_prob,
        help="chance that a document's hard line wraps are joined with spaces",
    )
    parser.add_argument(
        "--copy-task-prob",
        type=float,
        default=mix.copy_task_prob,
        help="chance that a sequence is a copy drill (a shuffled document, twice)",
    )
    parser.add_argument(
        "--noise-prob",
        type=float,
        default=mix.noise_prob,
        help="chance that a document is read with a span of random tokens inserted (never a "
        "target), so that an unfamiliar span does not throw the model for the rest of it",
    )
    parser.add_argument(
        "--noise-max-tokens",
        type=int,
        default=mix.noise_max_tokens,
        help="longest noise span, in tokens",
    )
    parser.add_argument(
        "--copy-circuit",
        action=argparse.BooleanOptionalAction,
        default=base.copy_circuit,
        help="start from weights that already hold a copy (induction) circuit",
    )
    parser.add_argument("--lr", type=float, default=base.peak_lr, help="peak learning rate")
    parser.add_argument(
        "--embedding-lr-scale",
        type=float,
        default=base.embedding_lr_scale,
        help="the token embedding learns at this times the learning rate",
    )
    parser.add_argument(
        "--early-steps",
        type=int,
        default=base.early_steps,
        help="first steps at --early-lr and --early-embedding-lr-scale, which keep a seeded copy "
        "circuit alive; 0: no early phase",
    )
    parser.add_argument("--early-lr", type=float, default=base.early_lr)
    parser.add_argument(
        "--early-embedding-lr-scale", type=float, default=base.early_embedding_lr_scale
    )
    parser.add_argument(
        "--ramp-steps",
        type=int,
        default=base.ramp_steps,
        help="steps over which the early rates move to --lr and --embedding-lr-scale",
    )
    parser.add_argument(
        "--lock-circuit",
        action=argparse.BooleanOptionalAction,
        default=base.lock_circuit,
        help="pin the copy circuit's weights from the end of the early phase on",
    )
    parser.add_argument("--warmup-steps", type=int, default=base.warmup_steps)
    parser.add_argument("--min-lr-ratio", type=float, default=base.min_lr_ratio)
    parser.add_argument(
        "--decay-fraction",
        type=float,
        default=base.decay_fraction,
        help="last fraction of the steps with linearly decaying learning rate",
    )
    parser.add_argument("--weight-decay", type=float, default=base.weight_decay)
    parser.add_argument(
        "--dropout",
        type=float,
        default=base.dropout,
        help="residual dropout on every attention and MLP output while training (0: none); "
        "the saved model is a plain Llama, without dropout",
    )
    parser.add_argument(
        "--max-train-bytes-per-book",
        type=int,
        default=None,
        metavar="N",
        help="train on at most the first N characters of each book's training part (probes)",
    )
    parser.add_argument("--seed", type=int, default=base.seed)
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=base.holdout_fraction,
        help="last fraction of each book's bytes never trained on",
    )
    parser.add_argument("--threads", type=int, default=base.threads, help="torch threads")
    parser.add_argument(
        "--no-bf16", action="store_true", help="fp32 matmuls instead of bf16 autocast"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the forward pass and loss: about 1.5x the steps per second on CPU "
        "after 10-25 s of compiling; deterministic, but not bit-identical to an uncompiled run",
    )
    parser.add_argument(
        "--storage-dtype", choices=("fp32", "fp16", "bf16"), default=base.storage_dtype
    )
    parser.add_argument("--log-every", type=int, default=base.log_every)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--checkpoint-every", type=int, default=0, help="save OUT/checkpoint.pt every N steps"
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="evaluate the model already in --out (bits per byte table) instead of training",
    )
    parser.add_argument(
        "--agnews",
        type=Path,
        default=None,
        help="with --evaluate-only: also score this AG News test.csv (never used in training)",
    )
    parser.add_argument(
        "--eval-stride",
        type=int,
        default=None,
        help="new tokens per held-out window (default: half the context)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (same result as an uninterrupted run)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    shape = ModelShape(
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_layers=args.layers,
        num_heads=args.heads,
        context_tokens=args.context,
    )
    return TrainConfig(
        data_dir=args.data_dir,
        out_dir=args.out,
        vocab_size=args.vocab_size,
        shape=shape,
        layout=args.layout,
        copy_circuit=args.copy_circuit,
        mix=DocumentMix(
            min_tokens=args.doc_min_tokens,
            max_tokens=args.doc_max_tokens,
            continue_prob=args.continue_prob,
            repeat_prob=args.repeat_prob,
            unwrap_prob=args.unwrap_prob,
            copy_task_prob=args.copy_task_prob,
            noise_prob=args.noise_prob,
            noise_max_tokens=args.noise_max_tokens,
        ),
        steps=args.steps,
        batch_size=args.batch_size,
        peak_lr=args.lr,
        embedding_lr_scale=args.embedding_lr_scale,
        early_steps=args.early_steps,
        early_lr=args.early_lr,
        early_embedding_lr_scale=args.early_embedding_lr_scale,
        ramp_steps=args.ramp_steps,
        lock_circuit=args.lock_circuit,
        warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio,
        decay_fraction=args.decay_fraction,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        max_train_bytes_per_book=args.max_train_bytes_per_book,
        seed=args.seed,
        holdout_fraction=args.holdout_fraction,
        max_books=args.max_books,
        threads=args.threads,
        bf16_autocast=not args.no_bf16,
        compile=args.compile,
        storage_dtype=args.storage_dtype,
        log_every=args.log_every,
        progress=not args.no_progress,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
    )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train the small embedded language model",
        description=(
            "Train a byte-level BPE tokenizer and a small Llama decoder on Gutenberg books "
            "(the last 5%% of every book's bytes is held out), deterministic given --seed."
        ),
    )
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.evaluate_only:
        from nncd_ray.training.bits_per_byte import evaluate_model

        report = evaluate_model(
            str(args.out),
            gutenberg_dir=args.data_dir,
            agnews_csv=args.agnews,
            stride=args.eval_stride,
            holdout_fraction=args.holdout_fraction,
        )
        print(json.dumps(report, indent=2))
        return 0
    from nncd_ray.training.loop import train_language_model

    result = train_language_model(config_from_args(args))
    summary = {
        "out_dir": str(result.out_dir),
        "parameters": result.parameters,
        "train_tokens": result.train_tokens,
        "tokens_seen": result.tokens_seen,
        "wall_seconds": round(result.wall_seconds, 1),
        "final_loss_nats": round(result.final_loss_nats, 4),
    }
    print(json.dumps(summary))
    return 0
