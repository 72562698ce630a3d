"""The matrix store (one Zarr v3 group per job, DESIGN.md §5): writing it, reading it back with
every value checked, verifying it, counting truncated documents, and the single-driver lease."""
