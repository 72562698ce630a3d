"""How a matrix job is cut into tiles: the unit of work, of scheduling, of storage and of resume.

Pure Python: no Ray, torch or Zarr here. A tile is a rectangle of ``tile × tile`` cells (smaller at
the bottom and right edges); it is also exactly one chunk of the store's ``pair_bits`` array, so a
tile's write never touches another tile's chunk.

Square jobs (one document set against itself) compute **every** tile, both above and below the
diagonal: C(xy) and C(yx) differ, and ``ncd-min`` needs both orders.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from nncd_ray.errors import ConfigError


@dataclass(frozen=True, kw_only=True, order=True)
class Tile:
    """A rectangle of the matrix: rows ``[row_start, row_stop)``, columns ``[col_start, col_stop)``.

    ``index_row``/``index_col`` locate the tile in the tile grid (and the chunk in the store);
    ``pairs`` is the number of cells, ``(row_stop - row_start) * (col_stop - col_start)``.
    """

    index_row: int
    index_col: int
    row_start: int
    row_stop: int
    col_start: int
    col_stop: int
    pairs: int

    @property
    def key(self) -> str:
        """``"r,c"``: how the store's ``failed_tiles`` attribute names this tile."""
        return f"{self.index_row},{self.index_col}"

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the tile."""
        return (self.row_stop - self.row_start, self.col_stop - self.col_start)


@dataclass(frozen=True, kw_only=True)
class TilePlan:
    """The tile grid of an ``n_rows × n_cols`` matrix cut into ``tile × tile`` tiles."""

    n_rows: int
    n_cols: int
    # edge length of a tile in documents (rows and columns alike); also the store's chunk edge
    tile: int

    def __post_init__(self) -> None:
        if self.n_rows < 1 or self.n_cols < 1:
            raise ConfigError(f"a matrix needs at least one row and one column, not {self.shape}")
        if self.tile < 1:
            raise ConfigError(
                f"the tile size must be a positive number of documents, not {self.tile}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """(n_rows, n_cols) of the whole matrix."""
        return (self.n_rows, self.n_cols)

    @property
    def grid(self) -> tuple[int, int]:
        """(tiles along rows, tiles along columns)."""
        return (-(-self.n_rows // self.tile), -(-self.n_cols // self.tile))

    @property
    def n_tiles(self) -> int:
        tiles_r, tiles_c = self.grid
        return tiles_r * tiles_c

    @property
    def n_pairs(self) -> int:
        return self.n_rows * self.n_cols

    def tile_at(self, index_row: int, index_col: int) -> Tile:
        """The tile in grid position ``(index_row, index_col)``."""
        tiles_r, tiles_c = self.grid
        if not (0 <= index_row < tiles_r and 0 <= index_col < tiles_c):
            raise IndexError(f"tile ({index_row}, {index_col}) is outside the grid {self.grid}")
        row_start = index_row * self.tile
        col_start = index_col * self.tile
        row_stop = min(row_start + self.tile, self.n_rows)
        col_stop = min(col_start + self.tile, self.n_cols)
        return Tile(
            index_row=index_row,
            index_col=index_col,
            row_start=row_start,
            row_stop=row_stop,
            col_start=col_start,
            col_stop=col_stop,
            pairs=(row_stop - row_start) * (col_stop - col_start),
        )

    def __iter__(self) -> Iterator[Tile]:
        """Tiles in grid order (row-major)."""
        tiles_r, tiles_c = self.grid
        for index_row in range(tiles_r):
            for index_col in range(tiles_c):
                yield self.tile_at(index_row, index_col)

    def tiles(self, *, skip: Iterable[tuple[int, int]] = ()) -> list[Tile]:
        """Tiles to compute, largest first (ties in grid order), leaving out the grid indices in
        ``skip`` (tiles already done).

        Largest first means the small edge tiles run last, so the job's tail is short.
        """
        skipped = set(skip)
        todo = [t for t in self if (t.index_row, t.index_col) not in skipped]
        todo.sort(key=lambda t: (-t.pairs, t.index_row, t.index_col))
        return todo
