"""Lossless compression with a causal language model and range coding (DESIGN.md §6).

``LMCodec(load_causal_lm(...)).compress(data)`` gives a self-describing ``.nncd`` file whose coded
payload is within a fraction of a percent of Σ −log2 p of the model's tokens; ``decompress`` gives
the bytes back. Modules: :mod:`~nncd_ray.codec.container` (file format),
:mod:`~nncd_ray.codec.segments` (bytes -> text/raw runs), :mod:`~nncd_ray.codec.stepper`
(incremental model probabilities), :mod:`~nncd_ray.codec.coder` (the codec),
:mod:`~nncd_ray.codec.files` (atomic file output and model loading for the CLI). Importing this
package does not import torch.
"""

from __future__ import annotations

from nncd_ray.codec.coder import CodecConfig, CompressionStats, LMCodec, lane_bounds
from nncd_ray.codec.container import FORMAT_VERSION, MAGIC, Header, read_container

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "CodecConfig",
    "CompressionStats",
    "Header",
    "LMCodec",
    "lane_bounds",
    "read_container",
]
