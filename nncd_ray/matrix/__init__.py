"""The matrix job: tiles of code lengths computed by scorers into a resumable Zarr store.

- ``config``, ``engine``: :class:`~nncd_ray.matrix.config.MatrixConfig` and
  :func:`~nncd_ray.matrix.engine.compute_matrix`;
- ``tiling``: the tile grid (pure arithmetic);
- ``tile_ledger``: the driver's ledger of one job, which sets each tile's completion marker (what
  resume trusts) after the tile's data is stored;
- ``worker``, ``failures``: scoring and storing one tile; how a failed tile is retried or not;
- ``store/``: the Zarr store in the public layout of DESIGN.md §5, its integrity checks, the one
  reader, the lease;
- ``cluster/``: the Ray layer (actor pool, private cluster and its reaper, GPUs per actor, job
  submission).
"""
