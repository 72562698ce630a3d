"""TilePlan: grid shape, edge tiles, largest-first order, exact partition of the matrix."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nncd_ray.errors import ConfigError
from nncd_ray.matrix.tiling import Tile, TilePlan


def test_grid_and_edge_tiles() -> None:
    plan = TilePlan(n_rows=10, n_cols=7, tile=4)
    assert plan.grid == (3, 2)
    assert plan.n_tiles == 6
    corner = plan.tile_at(2, 1)
    assert corner == Tile(
        index_row=2, index_col=1, row_start=8, row_stop=10, col_start=4, col_stop=7, pairs=6
    )
    assert corner.shape == (2, 3)
    assert corner.key == "2,1"


def test_largest_first_then_grid_order() -> None:
    plan = TilePlan(n_rows=10, n_cols=7, tile=4)
    order = [(t.index_row, t.index_col, t.pairs) for t in plan.tiles()]
    assert order == [(0, 0, 16), (1, 0, 16), (0, 1, 12), (1, 1, 12), (2, 0, 8), (2, 1, 6)]


def test_skip_done_tiles() -> None:
    plan = TilePlan(n_rows=8, n_cols=8, tile=4)
    left = plan.tiles(skip=[(0, 0), (1, 1)])
    assert sorted((t.index_row, t.index_col) for t in left) == [(0, 1), (1, 0)]


def test_square_plan_has_every_tile_both_sides_of_the_diagonal() -> None:
    plan = TilePlan(n_rows=9, n_cols=9, tile=3)
    indices = {(t.index_row, t.index_col) for t in plan.tiles()}
    assert indices == {(r, c) for r in range(3) for c in range(3)}


@pytest.mark.parametrize(("rows", "cols", "tile"), [(0, 3, 2), (3, 0, 2), (3, 3, 0), (3, 3, -1)])
def test_bad_plans_are_refused(rows: int, cols: int, tile: int) -> None:
    with pytest.raises(ConfigError):
        TilePlan(n_rows=rows, n_cols=cols, tile=tile)


def test_tile_outside_grid() -> None:
    with pytest.raises(IndexError):
        TilePlan(n_rows=4, n_cols=4, tile=2).tile_at(2, 0)


@given(
    n_rows=st.integers(min_value=1, max_value=60),
    n_cols=st.integers(min_value=1, max_value=60),
    tile=st.integers(min_value=1, max_value=70),
)
def test_tiles_partition_the_matrix_exactly(n_rows: int, n_cols: int, tile: int) -> None:
    plan = TilePlan(n_rows=n_rows, n_cols=n_cols, tile=tile)
    cover = np.zeros((n_rows, n_cols), dtype=np.int64)
    tiles = plan.tiles()
    for t in tiles:
        assert t.pairs == (t.row_stop - t.row_start) * (t.col_stop - t.col_start) > 0
        # each tile is exactly one store chunk: aligned starts, at most one chunk long
        assert t.row_start == t.index_row * tile and t.col_start == t.index_col * tile
        assert t.row_stop - t.row_start <= tile and t.col_stop - t.col_start <= tile
        cover[t.row_start : t.row_stop, t.col_start : t.col_stop] += 1
    assert (cover == 1).all()
    assert len(tiles) == plan.n_tiles == plan.grid[0] * plan.grid[1]
    assert sum(t.pairs for t in tiles) == plan.n_pairs
    sizes = [t.pairs for t in tiles]
    assert sizes == sorted(sizes, reverse=True)
