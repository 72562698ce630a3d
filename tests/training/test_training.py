"""The embedded language model: data split, deterministic training, evaluation, shipped weights."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from paths import GUTENBERG, ROOT

from nncd_ray.errors import ConfigError
from nncd_ray.scorers import make_scorer
from nncd_ray.scorers.lm import LMScorer
from nncd_ray.scorers.lm.loading import embedded_model_dir, load_causal_lm
from nncd_ray.training.bits_per_byte import documents_bits_per_byte, heldout_bits
from nncd_ray.training.books import load_books, split_book
from nncd_ray.training.compilation import compiler_available
from nncd_ray.training.config import ModelShape, TrainConfig
from nncd_ray.training.loop import train_language_model
from nncd_ray.training.schedule import embedding_lr_scale, learning_rate
from nncd_ray.training.sequences import prepare_data

CPU = torch.device("cpu")
MARKER = " Qzxv"  # appears only in the held-out tails of the test books

TINY = ModelShape(
    hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, context_tokens=64
)


def _book_text(seed: int) -> str:
    rng = np.random.default_rng(seed)
    words = "the a of and to in was he it his that with her as had for you at on said cafe naive"
    vocab = [*words.split(), "café", "naïve", "—", "“quoted”"]
    lines = []
    for _ in range(300):
        lines.append(" ".join(rng.choice(vocab, size=12)).capitalize() + ".")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def books_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small UTF-8 books whose last 5% (and only that) holds MARKER, 150 times."""
    folder = tmp_path_factory.mktemp("books")
    for seed in (1, 2):
        body = _book_text(seed)
        tail = MARKER * 150  # 750 bytes, < 5% of the ~17 kB book
        (folder / f"b{seed}.txt").write_text(body + tail, encoding="utf-8")
    for path in folder.glob("*.txt"):
        data = path.read_bytes()
        cut, _, _ = split_book(data, 0.05)
        assert MARKER.encode() not in data[:cut] and MARKER.encode() in data[cut:]
    return folder


def _config(books_dir: Path, out: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        data_dir=books_dir,
        out_dir=out,
        vocab_size=320,
        shape=TINY,
        steps=6,
        batch_size=2,
        warmup_steps=2,
        threads=1,
        progress=False,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_split_book_is_disjoint_and_on_a_character_boundary() -> None:
    data = ("abc" + "é" * 50).encode()  # 2-byte characters: the 95% cut lands inside one
    cut, train, heldout = split_book(data, 0.05)
    assert train.encode() + heldout.encode() == data
    assert cut == len(train.encode()) and len(data) - cut >= 0.05 * len(data)
    with pytest.raises(ConfigError):
        split_book(data, 1.5)


@pytest.mark.skipif(not GUTENBERG.is_dir(), reason="shared Gutenberg data not present")
def test_gutenberg_heldout_is_the_last_five_percent_of_every_book() -> None:
    books = load_books(GUTENBERG)
    assert len(books) == 13
    for book in books:
        data = (GUTENBERG / f"{book.name}.txt").read_bytes()
        assert book.train.encode() == data[: book.cut_byte]
        assert book.heldout.encode() == data[book.cut_byte :]
        assert len(data) - book.cut_byte >= 0.05 * len(data)
    assert sum(b.total_bytes - b.cut_byte for b in books) == 584_437  # PROTOCOL.md


def test_training_data_and_tokenizer_never_see_heldout_bytes(
    books_dir: Path, tmp_path: Path
) -> None:
    books, tokenizer, stream = prepare_data(_config(books_dir, tmp_path))
    eos = tokenizer.eos_token_id
    pieces = np.split(stream, np.flatnonzero(stream == eos) + 1)[:-1]
    decoded = [tokenizer.decode(p[:-1].tolist()) for p in pieces]
    assert decoded == [b.train for b in books]
    assert all(MARKER not in text for text in decoded)
    # 300 copies of " Qzxv" make it one token when the tokenizer sees the held-out tails
    assert len(tokenizer(MARKER, add_special_tokens=False)["input_ids"]) == 5
    _, leaky, _ = prepare_data(_config(books_dir, tmp_path, holdout_fraction=0.001))
    assert len(leaky(MARKER, add_special_tokens=False)["input_ids"]) == 1


def test_learning_rate_schedule() -> None:
    config = TrainConfig(data_dir=Path("."), out_dir=Path("."), steps=100, warmup_steps=10)
    rates = [learning_rate(s, config) for s in range(100)]
    assert rates[0] == pytest.approx(config.peak_lr / 10)
    assert rates[9] == rates[50] == rates[74] == config.peak_lr  # stable until the decay
    assert rates[99] == pytest.approx(config.peak_lr * config.min_lr_ratio)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert all(embedding_lr_scale(s, config) == 1.0 for s in range(100))


def test_early_phase_schedule() -> None:
    config = TrainConfig(
        data_dir=Path("."),
        out_dir=Path("."),
        steps=100,
        warmup_steps=10,
        peak_lr=1e-3,
        embedding_lr_scale=1.0,
        early_steps=40,
        early_lr=2e-4,
        early_embedding_lr_scale=0.1,
        ramp_steps=20,
    )
    rates = [learning_rate(s, config) for s in range(100)]
    scales = [embedding_lr_scale(s, config) for s in range(100)]
    assert rates[0] == pytest.approx(2e-5) and rates[9] == rates[39] == 2e-4
    assert scales[0] == scales[39] == 0.1
    assert rates[49] == pytest.approx(6e-4) and scales[49] == pytest.approx(0.55)  # half-way
    assert rates[59] == rates[74] == 1e-3 and scales[59] == scales[99] == 1.0
    assert rates[99] == pytest.approx(1e-3 * config.min_lr_ratio)
    assert all(a <= b for a, b in itertools.pairwise(rates[:60]))


def test_training_is_deterministic_and_resumable(books_dir: Path, tmp_path: Path) -> None:
    first = train_language_model(_config(books_dir, tmp_path / "a"))
    second = train_language_model(_config(books_dir, tmp_path / "b"))
    weights_a = (first.out_dir / "model.safetensors").read_bytes()
    assert weights_a == (second.out_dir / "model.safetensors").read_bytes()
    log = [
        json.loads(line) for line in (first.out_dir / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log] == list(range(1, 7)) and math.isfinite(log[-1]["bpb"])
    # a run stopped after 4 steps (checkpoint at 4, decay still ahead) resumed to 6 = fresh run
    resumed = tmp_path / "c"
    train_language_model(_config(books_dir, resumed, steps=5, checkpoint_every=4))
    train_language_model(_config(books_dir, resumed, resume=True))
    assert (resumed / "model.safetensors").read_bytes() == weights_a
    with pytest.raises(ConfigError, match="other settings"):
        train_language_model(_config(books_dir, resumed, resume=True, seed=3))
    # the run must load like any saved model and score text
    scorer = LMScorer(str(first.out_dir), device="cpu", dtype="fp32")
    assert scorer.loaded.context_tokens == TINY.context_tokens
    assert np.isfinite(scorer.document_bits(["Hello there.", "A café"])).all()


needs_compiler = pytest.mark.skipif(
    not compiler_available(), reason="torch.compile on CPU needs a C++ compiler on PATH"
)


@needs_compiler
def test_compiled_training_is_deterministic_and_close_to_eager(
    books_dir: Path, tmp_path: Path
) -> None:
    """``compile=True``: the same weights run to run (2 threads: a compiled backward would sum
    the embedding gradient with parallel atomic adds in a varying order), the same losses as an
    uncompiled run up to bf16 rounding, and a model that loads (with SDPA) like any other."""
    eager = train_language_model(_config(books_dir, tmp_path / "eager", threads=2))
    first = train_language_model(_config(books_dir, tmp_path / "a", compile=True, threads=2))
    second = train_language_model(_config(books_dir, tmp_path / "b", compile=True, threads=2))
    assert not torch.are_deterministic_algorithms_enabled()  # restored after training
    weights = (first.out_dir / "model.safetensors").read_bytes()
    assert weights == (second.out_dir / "model.safetensors").read_bytes()

    def losses(result: Any) -> list[float]:
        lines = (result.out_dir / "train_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss_nats"] for line in lines]

    assert losses(first) == pytest.approx(losses(eager), rel=2e-2)
    config = json.loads((first.out_dir / "training.json").read_text())["config"]
    assert config["compile"] is True
    scorer = LMScorer(str(first.out_dir), device="cpu", dtype="fp32")
    assert np.isfinite(scorer.document_bits(["Hello there.", "A café"])).all()


def test_copy_circuit_seed_and_embedding_learning_rate(books_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    shape = ModelShape(
        hidden_size=64, intermediate_size=64, num_layers=2, num_heads=4, context_tokens=64
    )

    def embedding(out: Path, scale: float, **changes: object) -> torch.Tensor:
        config = _config(
            books_dir, out, shape=shape, copy_circuit=True, embedding_lr_scale=scale, **changes
        )
        train_language_model(config)
        return load_file(out / "model.safetensors")["model.embed_tokens.weight"]

    frozen = embedding(tmp_path / "frozen", 0.0)
    assert torch.all(frozen[:, -1] == 0.1)  # the circuit's constant direction, untouched
    assert torch.all(frozen[:, 32:48] == 0)  # its reserved previous-token band, untouched
    learned = embedding(tmp_path / "learned", 1.0)
    assert not torch.all(learned[:, 32:48] == 0)
    with pytest.raises(ConfigError, match="embedding_lr_scale"):
        train_language_model(_config(books_dir, tmp_path / "bad", embedding_lr_scale=-1.0))
    # locked from step 0, the circuit survives even a fully learning embedding
    locked = embedding(tmp_path / "locked", 1.0, lock_circuit=True)
    assert torch.all(locked[:, -1] == 0.1) and torch.all(locked[:, 32:48] == 0)
    assert not torch.equal(locked[:, :32], frozen[:, :32])
    with pytest.raises(ConfigError, match="lock_circuit needs copy_circuit"):
        train_language_model(_config(books_dir, tmp_path / "bad", lock_circuit=True))
    with pytest.raises(ConfigError, match="runs into the decay"):
        train_language_model(_config(books_dir, tmp_path / "bad", early_steps=4, ramp_steps=2))


def test_heldout_windows_match_a_token_by_token_reference(tiny_llama_dir: Path) -> None:
    scorer = LMScorer(str(tiny_llama_dir), device="cpu", dtype="fp32")
    loaded = scorer.loaded
    text = "It was the best of times, it was the worst of times, " * 30
    ids = [*loaded.tokenizer(text, add_special_tokens=False)["input_ids"], loaded.eos_id]
    context = loaded.context_tokens
    assert len(ids) > context  # several windows
    expected = 0.0
    with torch.inference_mode():
        for j, token in enumerate(ids):  # each token after [b] + up to context-2 previous tokens
            prefix = [loaded.bos_id, *ids[max(0, j - (context - 2)) : j]]
            logits = loaded.model(input_ids=torch.tensor([prefix])).logits[0, -1].float()
            expected -= float(torch.log_softmax(logits, -1)[token]) / math.log(2)
    assert heldout_bits(scorer, text, stride=1, batch_size=64) == pytest.approx(expected, rel=1e-5)
    # a text that fits one window costs exactly its C(x) under the scorer: one C(x) in the package
    short = "A short document."
    assert heldout_bits(scorer, short, stride=context - 1) == pytest.approx(
        float(scorer.document_bits([short])[0]), rel=1e-5
    )


def test_classical_rates_come_from_the_scorers() -> None:
    texts = ["the quick brown fox " * 20, "jumps over the lazy dog"]
    rate = documents_bits_per_byte(make_scorer("gzip"), texts)
    assert rate.bits == sum(8 * len(gzip.compress(t.encode(), 9)) for t in texts)
    assert rate.bytes == sum(len(t.encode()) for t in texts) and rate.truncated == 0
    assert documents_bits_per_byte(make_scorer("zstd"), texts).bpb > 0


@pytest.mark.skipif(
    not (embedded_model_dir() / "config.json").exists(), reason="embedded model not built yet"
)
def test_shipped_model_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = sum(f.stat().st_size for f in embedded_model_dir().glob("*.safetensors"))
    assert 0 < weights <= 20 * 2**20
    loaded = load_causal_lm(None, device=CPU, dtype=torch.float32)
    assert loaded.fingerprint["model"] == "embedded"
    assert loaded.context_tokens >= 2 * 126 + 3  # an AG News pair fits
    text = "Stocks rose on Wall Street — café owners cheered (AP) 100%."
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert loaded.tokenizer.decode(ids) == text and loaded.bos_id != loaded.eos_id
    bits = LMScorer(None, device="cpu", dtype="fp32").document_bits(
        [text, "It was a dark and stormy night."]
    )
    assert (bits > 0).all() and bits[1] / len(b"It was a dark and stormy night.") < 6.0


def test_train_cli_help() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "train_lm.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--steps" in result.stdout and "--resume" in result.stdout


def test_max_books_leaves_the_other_books_unseen(books_dir: Path, tmp_path: Path) -> None:
    import argparse

    from nncd_ray.cli.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "m"), "--data-dir", str(books_dir)])
    assert config_from_args(args).max_books is None
    args = parser.parse_args(["--out", str(tmp_path / "m"), "--max-books", "1"])
    assert config_from_args(args).max_books == 1
    result = train_language_model(_config(books_dir, tmp_path / "one", max_books=1))
    meta = json.loads((result.out_dir / "training.json").read_text())
    assert [book["name"] for book in meta["books"]] == ["b1"]  # b2 never read
    with pytest.raises(ConfigError, match="max_books"):
        train_language_model(_config(books_dir, tmp_path / "none", max_books=0))


def test_noise_spans_train_and_are_recorded(books_dir: Path, tmp_path: Path) -> None:
    import argparse

    from nncd_ray.cli.train import add_arguments, config_from_args
    from nncd_ray.training.documents import DocumentMix

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", "m", "--noise-prob", "0.3", "--noise-max-tokens", "5"])
    mix = config_from_args(args).mix
    assert (mix.noise_prob, mix.noise_max_tokens) == (0.3, 5)
    assert config_from_args(parser.parse_args(["--out", "m"])).mix.noise_prob == 0.0
    config = _config(books_dir, tmp_path / "noisy", mix=DocumentMix(noise_prob=1.0))
    result = train_language_model(config)
    assert math.isfinite(result.final_loss_nats)
    meta = json.loads((result.out_dir / "training.json").read_text())
    assert meta["config"]["mix"]["noise_prob"] == 1.0
    log = (result.out_dir / "train_log.jsonl").read_text().splitlines()
    assert all(math.isfinite(json.loads(line)["bpb"]) for line in log)


@needs_compiler
def test_train_speed_bench_times_both_runs(books_dir: Path, tmp_path: Path) -> None:
    """``python -m nncd_ray.bench.train_speed``'s measurement on a tiny shape: both runs timed
    after ``skip``, the ratio of their rates, nothing left behind; bad arguments exit 2."""
    from nncd_ray.bench import train_speed

    base = replace(train_speed.recipe_config(books_dir, steps=6, skip=2, threads=1), shape=TINY)
    base = replace(base, vocab_size=320, batch_size=2, copy_circuit=False, lock_circuit=False)
    base = replace(base, early_steps=0)
    report = train_speed.measure(base, skip=2)
    eager, compiled = report["runs"]
    assert (eager["compile"], compiled["compile"]) == (False, True)
    assert report["speedup"] == pytest.approx(
        eager["seconds_per_step"] / compiled["seconds_per_step"]
    )
    for run in (eager, compiled):
        assert run["seconds_per_step"] > 0 and run["fraction_of_matmul_rate"] > 0
        assert run["tokens_per_second"] == pytest.approx(2 * 64 / run["seconds_per_step"])
    assert report["tokens_per_step"] == 2 * 64 and report["matmul"]["dtype"] == "bfloat16"
    assert train_speed.main(["--data-dir", str(books_dir), "--steps", "5", "--skip", "5"]) == 2
    missing = str(tmp_path / "no-books")
    assert train_speed.main(["--data-dir", missing, "--steps", "5", "--skip", "2"]) == 2


def test_compile_without_a_compiler_is_a_clear_error(
    books_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to run here
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler"):
        train_language_model(_config(books_dir, tmp_path / "m", compile=True))


def test_residual_dropout_trains_only_and_leaves_the_saved_model_plain(
    books_dir: Path, tmp_path: Path
) -> None:
    """``--dropout``: hooks drop block outputs in training mode only (eval mode gives exactly the
    hook-free model's logits), the saved state dict has the plain Llama keys, bad values are a
    ConfigError, and a run resumed from a checkpoint draws the same masks as a fresh one."""
    import argparse

    from nncd_ray.cli.train import add_arguments, config_from_args
    from nncd_ray.training.dropout import add_residual_dropout
    from nncd_ray.training.model import build_model
    from nncd_ray.training.sequences import prepare_data

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parsed = config_from_args(
        parser.parse_args(["--out", "m", "--dropout", "0.1", "--max-train-bytes-per-book", "900"])
    )
    assert (parsed.dropout, parsed.max_train_bytes_per_book) == (0.1, 900)
    assert config_from_args(parser.parse_args(["--out", "m"])).dropout == 0.0

    _, tokenizer, _ = prepare_data(_config(books_dir, tmp_path / "prep"))
    torch.manual_seed(0)
    model = build_model(TINY, tokenizer)
    keys = sorted(model.state_dict())
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.no_grad():
        model.eval()
        plain = model(input_ids=ids).logits
        handles = add_residual_dropout(model, 0.5)
        assert len(handles) == 2 * TINY.num_layers
        assert torch.equal(model(input_ids=ids).logits, plain)
        model.train()
        assert not torch.allclose(model(input_ids=ids).logits, plain)
    assert sorted(model.state_dict()) == keys
    with pytest.raises(ConfigError, match="dropout"):
        add_residual_dropout(model, 1.0)
    with pytest.raises(ConfigError, match="dropout"):
        train_language_model(_config(books_dir, tmp_path / "bad", dropout=-0.1))

    fresh = train_language_model(_config(books_dir, tmp_path / "fresh", dropout=0.2))
    plain_run = train_language_model(_config(books_dir, tmp_path / "plain"))
    weights = (fresh.out_dir / "model.safetensors").read_bytes()
    plain_weights = (plain_run.out_dir / "model.safetensors").read_bytes()
    assert weights != plain_weights
    resumed = tmp_path / "resumed"
    train_language_model(_config(books_dir, resumed, dropout=0.2, steps=5, checkpoint_every=3))
    train_language_model(_config(books_dir, resumed, dropout=0.2, resume=True))
    assert (resumed / "model.safetensors").read_bytes() == weights
    # a checkpoint written before --dropout existed resumes as dropout 0 (the default then)
    older = tmp_path / "older"
    train_language_model(_config(books_dir, older, steps=5, checkpoint_every=3))
    state = torch.load(older / "checkpoint.pt", weights_only=False)
    del state["config"]["dropout"]
    torch.save(state, older / "checkpoint.pt")
    train_language_model(_config(books_dir, older, resume=True))
    assert (older / "model.safetensors").read_bytes() == plain_weights
    with pytest.raises(ConfigError, match="other settings: dropout"):
        train_language_model(_config(books_dir, older, resume=True, dropout=0.2))
    scorer = LMScorer(str(fresh.out_dir), device="cpu", dtype="fp32")
    assert np.isfinite(scorer.document_bits(["Hello there.", "A café"])).all()
