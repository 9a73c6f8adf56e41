"""The KSG estimate of the mutual information I(X; Y) (Kraskov et al. 2004), one value per
ensemble member, batched over members in torch on `neighbours.py`'s exact max-norm neighbour
search (the float64 scipy reference it is held to is tests/reference/metrics.py).
"""

from __future__ import annotations

import math

import torch

from .neighbours import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    _MAX_NORM,
    _Workspace,
    _Tiles,
    _as_count,
    _as_member_points,
    _finite_members,
    _block_size_for,
    _chunk_entries,
    _make_blocks,
    _box_distances,
    _tile_distances,
    _k_nearest,
)


__all__ = ["ksg_mutual_information"]


# --------------------------------------------------------------------------------------
# KSG mutual information
# --------------------------------------------------------------------------------------


def _count_strictly_within(points, radius, block_size: int, workspace: _Workspace, chunk_entries: int):
    """(G, n) number of OTHER points at max-norm distance strictly below radius (G, n)."""
    n_members, n_points, _ = points.shape
    device = points.device
    blocks = _make_blocks([points], block_size, points.dtype)
    n_blocks = blocks.n_blocks
    valid = blocks.position_valid
    original = blocks.original_index.flatten()
    member = torch.arange(n_members, device=device).repeat_interleave(n_blocks * block_size)
    position_radius = torch.where(valid, radius[member, original.clamp(min=0)], 0.0)
    box = _box_distances(blocks, _MAX_NORM)
    tiles = _Tiles.kept(box < position_radius.view(n_members, n_blocks, block_size).amax(-1, keepdim=True))
    counts = torch.zeros(n_members * n_blocks * block_size, dtype=torch.long, device=device)
    slots = torch.arange(block_size, device=device)
    row_radius = position_radius.view(-1, block_size)
    tiles_per_chunk = max(chunk_entries // block_size**2, 1)
    for first, last in tiles.chunks(0, n_members * n_blocks, tiles_per_chunk):
        tile_0, tile_1 = tiles.offsets[first], tiles.offsets[last]
        rows, columns = tiles.row_blocks[tile_0:tile_1], tiles.column_blocks[tile_0:tile_1]
        shape = (block_size, tile_1 - tile_0, block_size)
        distances = _tile_distances(
            blocks, rows, columns, _MAX_NORM, out=workspace.get(0, shape), scratch=workspace.get(1, shape)
        )
        within = torch.lt(distances, row_radius[rows].unsqueeze(0)).sum(0)  # (P, B_row)
        counts.index_add_(0, (rows[:, None] * block_size + slots).flatten(), within.flatten())
    result = torch.zeros((n_members, n_points), dtype=torch.long, device=device)
    result[member[valid], original[valid]] = counts[valid]
    return result


def _count_strictly_within_1d(values: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """(G, n) number of OTHER points with |v_j - v_i| < radius_i, for values (G, n).

    On sorted values, fl(v_j - v_i) is monotone in v_j, so the points within the radius are a
    contiguous range; its ends come from a vectorised binary search on exactly the predicate
    the definition (and the reference's kd-tree) evaluates.
    """
    n_points = values.shape[1]
    ordered = torch.sort(values, dim=1).values

    def count_prefix(predicate):
        """Per point, the length of the prefix of `ordered` on which predicate holds."""
        low = torch.zeros_like(values, dtype=torch.long)
        high = torch.full_like(low, n_points)
        for _ in range(max(n_points, 1).bit_length()):
            middle = (low + high) // 2
            holds = predicate(ordered.gather(1, middle.clamp(max=n_points - 1))) & (middle < high)
            low = torch.where(holds, middle + 1, low)
            high = torch.where(holds, high, middle)
        return low

    left_of = count_prefix(lambda other: other - values <= -radius)
    not_right_of = count_prefix(lambda other: other - values < radius)
    # The point itself is within a positive radius; nothing is within a zero radius.
    return torch.where(radius > 0, not_right_of - left_of - 1, 0)


def ksg_mutual_information(
    x,
    y,
    k: int = 3,
    *,
    block_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> torch.Tensor:
    """KSG estimate (Kraskov et al. 2004, algorithm 1) of I(X; Y) in nats per member, (M,) float64.

    Member m's value is the reference's ``ksg_mutual_information(x[m], y[m], k)``: eps_i is the
    max-norm distance to the k-th nearest other point in the joint space, n_x(i) and n_y(i) count
    the other points strictly closer than eps_i in each space, and
    I = psi(k) + psi(n) - mean(psi(n_x + 1) + psi(n_y + 1)). No jitter: ties are counted as the
    definition says. Max-norm distances involve only differences and maxima, so they and the
    counts are exactly the reference's. NaN for a member with non-finite inputs. Computed in
    float64.

    Parameters
    ----------
    x : tensor (M, n, d_x) or (M, n);  y : tensor (M, n, d_y) or (M, n).
    k : int, 1 <= k <= n - 1.
    block_size, memory_budget_bytes : as for :func:`smooth_knn_statistics`.
    """
    x = _as_member_points("x", x, allow_2d=True)
    y = _as_member_points("y", y, allow_2d=True)
    if x.shape[:2] != y.shape[:2]:
        raise ValueError(
            "x and y must have the same number of members and of points; got "
            f"x.shape={tuple(x.shape)}, y.shape={tuple(y.shape)}"
        )
    if x.device != y.device:
        raise ValueError(f"x and y must be on one device; got {x.device} and {y.device}")
    n_members, n_points = x.shape[:2]
    k = _as_count("k", k)
    if not 1 <= k < n_points:
        raise ValueError(f"k must satisfy 1 <= k < n = {n_points}; got k={k}")
    device = x.device
    block_size = _block_size_for(device, block_size, k)
    chunk_entries = _chunk_entries(device, torch.float64, memory_budget_bytes)
    result = torch.full((n_members,), math.nan, dtype=torch.float64, device=device)
    finite = _finite_members(x, y)
    if not bool(finite.any()):
        return result
    good = torch.nonzero(finite).flatten()
    x, y = x[good].double(), y[good].double()
    workspace = _Workspace(3, torch.float64, device)
    blocks = _make_blocks([torch.cat([x, y], -1)], block_size, torch.float64)
    nearest, _ = _k_nearest(blocks, k, _MAX_NORM, _box_distances(blocks, _MAX_NORM), workspace, chunk_entries)
    valid = blocks.position_valid
    original = blocks.original_index.flatten()
    member = torch.arange(good.numel(), device=device).repeat_interleave(blocks.n_blocks * block_size)
    eps = torch.empty((good.numel(), n_points), dtype=torch.float64, device=device)
    eps[member[valid], original[valid]] = nearest[valid, k - 1]
    n_x, n_y = (
        _count_strictly_within_1d(points[..., 0], eps) if points.shape[-1] == 1
        else _count_strictly_within(points, eps, block_size, workspace, chunk_entries)
        for points in (x, y)
    )
    digamma = torch.special.digamma
    constant = digamma(torch.tensor([float(k), float(n_points)], dtype=torch.float64, device=device)).sum()
    result[good] = constant - (digamma(n_x.double() + 1) + digamma(n_y.double() + 1)).mean(1)
    return result
