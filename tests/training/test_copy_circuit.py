"""The seeded copy circuit: it copies before any training, and the model stays a plain Llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nncd_ray.errors import ConfigError
from nncd_ray.training.copy_circuit import CircuitLock, CopyCircuit, seed_copy_circuit


def _model(layers: int = 2, **extra: object) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        **extra,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _halves(model: LlamaForCausalLM, n: int = 150) -> tuple[float, float]:
    """Mean bits per token of a random token sequence and of its verbatim repeat."""
    tokens = np.random.default_rng(3).integers(3, model.config.vocab_size, n).tolist()
    ids = torch.tensor([[0, *tokens, 1, *tokens]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids[:, :-1]).logits[0].float(), -1)
    bits = -logp.gather(1, ids[0, 1:, None])[:, 0] / np.log(2)
    return float(bits[:n].mean()), float(bits[n + 1 :].mean())


def test_a_seeded_model_copies_before_training() -> None:
    first, second = _halves(_model())
    seeded = _model()
    seed_copy_circuit(seeded)
    s_first, s_second = _halves(seeded)
    assert second > 0.97 * first  # a random model does not copy
    assert s_second < 0.8 * s_first  # the seeded one does, at any distance up to 150 tokens


def test_a_circuit_lock_restores_the_circuit_and_only_the_circuit() -> None:
    model = _model(layers=3)
    seed_copy_circuit(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lock = CircuitLock(model)
    assert lock.numel == 2 * 4 * 64 * 256 + 1024 * 65  # two heads' q/k/v/o, two embedding bands
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    lock.restore()
    after = dict(model.named_parameters())
    pinned = [
        ("model.layers.0.self_attn.q_proj.weight", (slice(0, 64), slice(None))),
        ("model.layers.1.self_attn.o_proj.weight", (slice(None), slice(0, 64))),
        ("model.embed_tokens.weight", (slice(None), slice(128, 192))),
        ("model.embed_tokens.weight", (slice(None), slice(255, 256))),
    ]
    for name, index in pinned:
        assert torch.equal(after[name][index], before[name][index])
    free = [
        ("model.layers.0.self_attn.q_proj.weight", (slice(64, None), slice(None))),
        ("model.layers.2.self_attn.q_proj.weight", (slice(0, 64), slice(None))),
        ("model.embed_tokens.weight", (slice(None), slice(0, 128))),
    ]
    for name, index in free:
        assert not torch.equal(after[name][index], before[name][index])


def test_the_previous_token_head_aims_at_distance_one() -> None:
    model = _model()
    model.config._attn_implementation = "eager"
    seed_copy_circuit(model)
    ids = torch.randint(3, 1024, (1, 200), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        attn = model(input_ids=ids, output_attentions=True).attentions[0][0, 0]
    assert float(torch.diagonal(attn, offset=-1)[5:].mean()) > 0.9


def test_a_seeded_model_saves_and_loads_as_a_plain_llama(tmp_path) -> None:
    model = _model()
    seed_copy_circuit(model)
    model.save_pretrained(tmp_path)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[0, 5, 9, 700, 5, 9]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_the_circuit_needs_two_layers_and_default_rope() -> None:
    with pytest.raises(ConfigError, match="two layers"):
        seed_copy_circuit(_model(layers=1))
    with pytest.raises(ConfigError, match="two layers"):
        seed_copy_circuit(_model(layers=2), CopyCircuit(prev_layer=1))
    linear = _model(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
    with pytest.raises(ConfigError, match="default RoPE"):
        seed_copy_circuit(linear)
