"""Documents in: corpora, readers for JSONL/CSV/Parquet/Hugging Face inputs, AG News and the
benchmark splits of ``shared/bench/PROTOCOL.md``.

The bottom layer of the package (after :mod:`nncd_ray.errors`): it imports no other part of it,
and no torch, Ray or Zarr.
"""
