"""Seed a fresh Llama decoder with a working copy ("induction") circuit before training.

Neural NCD measures what knowing ``x`` saves on ``y``; a model that cannot copy from its context
saves almost nothing. Small models learn to copy only after a long plateau (the previous-token
head and the induction head are each useless without the other), longer than a CPU-hour of
training. So instead of waiting for it, the initial weights already hold the two-head circuit,
written in closed form, and training then adapts or discards it like any other weights:

* layer ``prev_layer``, head 0 attends to the previous position: its query and key read a constant
  direction of the residual stream (the last embedding dimension, set to ``constant`` for every
  token), rotated so that RoPE's score peaks at a distance of one; its value reads the token's
  first ``head_dim`` embedding dimensions and writes them, scaled by ``prev_gain``, into a reserved
  band of the residual stream (embedding dimensions ``[hidden/2, hidden/2 + head_dim)``, zeroed);
* layer ``prev_layer + 1``, head 0 is the induction head: its query reads the current token's
  embedding, its key the reserved band (the previous token), through the lowest-frequency RoPE
  pairs only, so the match does not depend on distance; its value copies the attended token's
  embedding back onto the residual stream, where the tied output embedding turns it into a logit.
* every other residual branch (attention output and MLP down projections) starts at zero, a common
  initialisation that here also keeps their random outputs from drowning the circuit.

The model stays a plain ``LlamaForCausalLM``; nothing about loading or scoring changes.

The circuit lives in small weights (the embedding has sigma 0.02) and Adam moves every weight by
about the learning rate per step: at 2e-3 it was gone within 40 steps (measured), at 5e-4 with the
embedding learning at a tenth of that (``embedding_lr_scale=0.1``) it survived and grew stronger.
Raising the rate once it had grown for 400 steps still wore it away (measured at 1.5e-3), so
:class:`CircuitLock` pins its weights from then on while everything else learns at the full rate
(``TrainConfig.lock_circuit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from nncd_ray.errors import ConfigError

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM


@dataclass(frozen=True, kw_only=True)
class CopyCircuit:
    """Scales of the seeded circuit (chosen on random-token repeats, never on text)."""

    prev_layer: int = 0
    constant: float = 0.1  # value of the constant embedding dimension
    position_gain: float = 2.0  # previous-token head: query/key weight on the constant direction
    position_pairs: int = 8  # highest-frequency RoPE pairs used to aim at distance one
    prev_gain: float = 0.05  # how strongly the previous token is written into the reserved band
    match_gain: float = 8.0  # induction head: query/key weight on each matched dimension
    match_pairs: int = 8  # lowest-frequency RoPE pairs used to match tokens
    copy_gain: float = 0.5  # induction head: how strongly the attended token is written back


def _rope_parameters(model: LlamaForCausalLM) -> dict[str, Any]:
    rope = getattr(model.config, "rope_parameters", None)
    if not rope or "rope_theta" not in rope:
        raise ConfigError("the copy circuit needs the model's RoPE parameters (rope_theta)")
    return dict(rope)


def _layout(model: LlamaForCausalLM) -> tuple[int, int, int]:
    """(head dimension, start of the reserved previous-token band, the constant dimension): where
    the circuit sits in the residual stream, for :func:`seed_copy_circuit` and :class:`CircuitLock`.
    """
    hidden = model.config.hidden_size
    return hidden // model.config.num_attention_heads, hidden // 2, hidden - 1


def rope_frequencies(model: LlamaForCausalLM) -> torch.Tensor:
    """Per-pair angular frequencies (radians per position) of the model's default RoPE."""
    head_dim = _layout(model)[0]
    base = float(_rope_parameters(model)["rope_theta"])
    return base ** (-torch.arange(head_dim // 2, dtype=torch.float64) * 2 / head_dim)


class CircuitLock:
    """Pins the circuit's weights: :meth:`restore` writes back the values they had when the lock
    was made, so the optimizer (and its weight decay) cannot wear the circuit away.

    Pinned: both circuit heads' query, key and value rows and their output columns, and the
    embedding's constant and reserved-band dimensions. The token dimensions the heads read keep
    learning; the heads read and write them through the same (tied) embedding, so matching and
    copying stay consistent as the embedding changes.
    """

    def __init__(self, model: LlamaForCausalLM, circuit: CopyCircuit | None = None) -> None:
        c = circuit or CopyCircuit()
        head_dim, band, const = _layout(model)
        heads = slice(0, head_dim)
        self._slices: list[tuple[torch.Tensor, tuple[slice, ...]]] = []
        for layer in (c.prev_layer, c.prev_layer + 1):
            attn = model.model.layers[layer].self_attn
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                self._slices.append((proj.weight, (heads, slice(None))))
            self._slices.append((attn.o_proj.weight, (slice(None), heads)))
        embed = model.model.embed_tokens.weight
        self._slices.append((embed, (slice(None), slice(band, band + head_dim))))
        self._slices.append((embed, (slice(None), slice(const, const + 1))))
        self._saved = [weight[index].detach().clone() for weight, index in self._slices]

    @property
    def numel(self) -> int:
        return sum(saved.numel() for saved in self._saved)

    def restore(self) -> None:
        with torch.no_grad():
            for (weight, index), saved in zip(self._slices, self._saved, strict=True):
                weight[index] = saved


def seed_copy_circuit(model: LlamaForCausalLM, circuit: CopyCircuit | None = None) -> None:
    """Write the circuit into ``model``'s freshly initialised weights, in place."""
    c = circuit or CopyCircuit()
    config = model.config
    head_dim, band, const = _layout(model)
    half = head_dim // 2
    if c.prev_layer + 1 >= config.num_hidden_layers:
        raise ConfigError("the copy circuit needs two layers: prev_layer and the one after it")
    if band + head_dim > const or head_dim > band:
        raise ConfigError(
            f"hidden size {config.hidden_size} is too small for the copy circuit's bands"
        )
    if not (0 < c.position_pairs <= half and 0 < c.match_pairs <= half):
        raise ConfigError(f"position_pairs and match_pairs must be in 1..{half}")
    rope = _rope_parameters(model).get("rope_type", "default")
    if rope != "default":
        raise ConfigError(f"the copy circuit is written for default RoPE, not {rope!r}")
    theta = rope_frequencies(model)
    heads = slice(0, head_dim)  # head 0's rows of q/k/v and columns of o
    eye = torch.eye(head_dim)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        embed[:, band : band + head_dim] = 0.0
        embed[:, const] = c.constant

        prev = model.model.layers[c.prev_layer].self_attn
        for proj in (prev.q_proj, prev.k_proj, prev.v_proj):
            proj.weight[heads] = 0.0
        for p in range(c.position_pairs):
            # RoPE turns pair p by p's angle per position; pre-turning the query back by one step
            # makes every pair's score cos((distance - 1) * theta_p), largest at distance one.
            prev.q_proj.weight[p, const] = c.position_gain * math.cos(theta[p])
            prev.q_proj.weight[p + half, const] = -c.position_gain * math.sin(theta[p])
            prev.k_proj.weight[p, const] = c.position_gain
        prev.v_proj.weight[heads, :head_dim] = eye
        prev.o_proj.weight[band : band + head_dim, heads] = c.prev_gain * eye

        induction = model.model.layers[c.prev_layer + 1].self_attn
        for proj in (induction.q_proj, induction.k_proj, induction.v_proj):
            proj.weight[heads] = 0.0
        slow = list(range(half - c.match_pairs, half))
        for i, d in enumerate(slow + [p + half for p in slow]):
            induction.q_proj.weight[d, i] = c.match_gain
            induction.k_proj.weight[d, band + i] = c.match_gain
        induction.v_proj.weight[heads, :head_dim] = eye
        induction.o_proj.weight[:head_dim, heads] = c.copy_gain * eye
