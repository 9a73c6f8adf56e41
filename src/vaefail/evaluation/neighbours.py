"""Exact k-nearest-neighbour search for many ensemble members at once, in torch, on any device:
the engine under the smooth kNN statistic (`smooth_knn.py`) and the KSG estimator (`ksg.py`).

How. Each member's points are ordered into compact blocks of B points (a balanced kd partition:
split at the median of the widest coordinate, recursively, all members at once). The work is
then done on B x B *tiles* (a row block against a column block), and a tile is evaluated only if
the distance between the two blocks' bounding boxes is below the largest radius that matters
for either block: for the realistic 2-D inputs about 1.9 x the pairs that matter are touched
instead of all n^2, and with a large radius every tile is kept, which is the dense pass. There
is no Python loop over members or points: loops run over tree levels and memory-bounded chunks
of tiles (and, on a CPU, members, to keep the scratch memory small).

Exactness. Distances are exact (never the matmul formula of torch.cdist) and computed by one
function of the pair everywhere, so that d_ij == d_ji bitwise and every inclusion decision is
taken on identical numbers in every place that needs it. On a CPU numpy supplies the square
root (torch's float64 sqrt there is not correctly rounded) and the sorts (faster).

Threads. On a CPU shared with other work, two torch threads can be much slower than one (each
of the many operations waits at a barrier for a preempted thread: 0.07 s became 0.1-3 s per
call here); a caller on a busy machine should use torch.set_num_threads(1).
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy
import torch


DEFAULT_MEMORY_BUDGET_BYTES = 1 << 30
# Tile side B (a power of two): small blocks hug the relevant region tightly (less wasted work)
# but shorten the inner loops of the kernels; a GPU prefers fewer, larger tiles.
CPU_BLOCK_SIZE = 16
GPU_BLOCK_SIZE = 32
# On a CPU, chunks of about this many tile entries (2 MB arrays in float64) keep a chunk's
# arrays in cache while keeping torch's per-operation overhead small (measured per member:
# 2^16 entries 83 ms, 2^17 71, 2^18 61-70, 2^19 64, 2^20 70; above 4 MB per array every pass
# slows down 2-4 x).
CPU_CHUNK_ENTRIES = 1 << 18
# Scratch arrays of chunk size: weights, two tree levels, padded polynomials, one more scratch.
_WORKSPACE_BUFFERS = 5

_EUCLIDEAN = "euclidean"
_MAX_NORM = "max"
# From this many coordinates on, torch.cdist's direct (not matmul) kernel, one pass per tile,
# beats three passes per coordinate. It is a function of the pair alone (so still symmetric
# and the same wherever a pair is computed); box distances then differ from it by rounding,
# which the margins of the tile tests cover.
_FUSED_DISTANCE_FROM_DIMS = 5


# --------------------------------------------------------------------------------------
# Input validation and memory
# --------------------------------------------------------------------------------------


def _as_count(name: str, value) -> int:
    """Return `value` as a Python int or raise ValueError naming `name` (bools are rejected)."""
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    return int(value)


def _as_positive_float(name: str, value) -> float:
    """Return `value` as a finite float > 0 or raise ValueError naming `name`."""
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number > 0; got {value!r}")
    value_float = float(value)
    if not (numpy.isfinite(value_float) and value_float > 0.0):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return value_float


def _as_member_points(name: str, value, *, allow_2d: bool = False) -> torch.Tensor:
    """`value` as a floating (M, n, d) tensor (or (M, n) -> (M, n, 1)); ValueError naming `name`."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{name} must be a real numeric tensor; got {value!r:.200}") from error
    if value.dtype == torch.bool or value.is_complex():
        raise ValueError(f"{name} must be a real numeric tensor; got dtype {value.dtype}")
    if allow_2d and value.ndim == 2:
        value = value.unsqueeze(-1)
    if value.ndim != 3:
        expected = "(members, points) or (members, points, dims)" if allow_2d else (
            "(members, points, dims)"
        )
        raise ValueError(f"{name} must have shape {expected}; got shape {tuple(value.shape)}")
    if value.shape[1] == 0 or value.shape[2] == 0:
        raise ValueError(
            f"{name} must have at least one point and one dimension; got shape {tuple(value.shape)}"
        )
    if not value.is_floating_point():
        value = value.to(torch.float64)
    return value


def _finite_members(*tensors: torch.Tensor) -> torch.Tensor:
    """(M,) bool: members whose inputs are all finite."""
    finite = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for tensor in tensors:
        finite &= torch.isfinite(tensor).flatten(1).all(1)
    return finite


def _compute_dtype(dtype) -> torch.dtype:
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"dtype must be torch.float64 or torch.float32; got {dtype!r}")
    return dtype


def _block_size_for(device: torch.device, block_size, k: int) -> int:
    if block_size is None:
        block_size = CPU_BLOCK_SIZE if device.type == "cpu" else GPU_BLOCK_SIZE
    block_size = _as_count("block_size", block_size)
    if block_size < 2 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 2; got {block_size}")
    # A block plus its nearest full block must hold k neighbours (see `_k_nearest`).
    return max(block_size, 1 << math.ceil(math.log2(k + 1)))


def _chunk_entries(device: torch.device, dtype: torch.dtype, memory_budget_bytes) -> int:
    """Tile entries per chunk: the workspace takes at most half the budget; the cache on a CPU."""
    budget = _as_count("memory_budget_bytes", memory_budget_bytes)
    if budget <= 0:
        raise ValueError(f"memory_budget_bytes must be > 0; got {budget}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    entries = budget // (2 * _WORKSPACE_BUFFERS * itemsize)
    if device.type == "cpu":
        entries = min(entries, CPU_CHUNK_ENTRIES)
    return max(entries, 1)


class _Workspace:
    """Scratch arrays reused from chunk to chunk.

    Fresh large allocations are expensive on a CPU (every new page faults: ~0.4 ms per MB
    measured here, more than the arithmetic done on it), so the large temporaries are views
    into a few buffers, each grown (geometrically) when a request does not fit.
    """

    def __init__(self, n_buffers: int, dtype: torch.dtype, device: torch.device):
        self._buffers = [torch.empty(0, dtype=dtype, device=device) for _ in range(n_buffers)]

    def get(self, index: int, shape) -> torch.Tensor:
        size = math.prod(shape)
        if self._buffers[index].numel() < size:
            grown = max(size, 2 * self._buffers[index].numel())
            self._buffers[index] = self._buffers[index].new_empty(grown)
        return self._buffers[index][:size].view(shape)


# --------------------------------------------------------------------------------------
# Blocks: a balanced kd partition of each member's points
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _kd_levels(n_points: int, block_size: int) -> tuple[tuple[tuple[int, ...], tuple[bool, ...]], ...]:
    """The segment structure of the kd partition, which depends only on n and B.

    Level by level: the segment index of each position and whether each segment splits. A
    segment [s, e) of more than B points splits at s + B * ceil(blocks / 2), so that every
    boundary is a multiple of B and the final segments are the blocks [b B, (b + 1) B) (the last
    one possibly partial).
    """
    levels = []
    segments = [(0, n_points)]
    while any(end - start > block_size for start, end in segments):
        segment_of_position, splits, children = [], [], []
        for index, (start, end) in enumerate(segments):
            segment_of_position += [index] * (end - start)
            n_blocks = -(-(end - start) // block_size)
            splits.append(n_blocks > 1)
            if n_blocks > 1:
                middle = start + block_size * ((n_blocks + 1) // 2)
                children += [(start, middle), (middle, end)]
            else:
                children.append((start, end))
        levels.append((tuple(segment_of_position), tuple(splits)))
        segments = children
    return tuple(levels)


def _argsort_rows(keys: torch.Tensor) -> torch.Tensor:
    """argsort along the last axis; numpy's on a CPU (several times faster than torch's here)."""
    if keys.device.type == "cpu":
        return torch.from_numpy(numpy.argsort(keys.numpy(), axis=-1))
    return keys.argsort(dim=-1)


def _kd_permutation(points: torch.Tensor, block_size: int) -> torch.Tensor:
    """(U, n) permutation putting each unit's points in kd-block order (points: (U, n, d)).

    At each level every segment is sorted along its own widest coordinate, all units and
    segments in one sort: the key is 2 * segment + (coordinate - low) / spread / 2.
    """
    n_units, n_points, n_dims = points.shape
    device = points.device
    permutation = torch.arange(n_points, device=device).expand(n_units, n_points).clone()
    points = points.to(torch.float64)
    for segment_of_position, splits in _kd_levels(n_points, block_size):
        segment = torch.tensor(segment_of_position, device=device)
        splits_here = torch.tensor(splits, device=device, dtype=torch.float64)
        n_segments = len(splits)
        index = segment.view(1, n_points, 1).expand(n_units, n_points, n_dims)
        low = torch.full((n_units, n_segments, n_dims), math.inf, dtype=points.dtype, device=device)
        low = low.scatter_reduce(1, index, points, "amin")
        high = torch.full_like(low, -math.inf).scatter_reduce(1, index, points, "amax")
        widest = (high - low).argmax(-1, keepdim=True)  # (U, S, 1)
        spread = (high - low).gather(2, widest).squeeze(2)[:, segment]  # (U, n)
        low = low.gather(2, widest).squeeze(2)[:, segment]
        coordinate = points.gather(2, widest[:, segment]).squeeze(2)
        fraction = torch.where(spread > 0, (coordinate - low) / spread.clamp(min=1e-300), 0.0)
        key = 2.0 * segment + 0.5 * fraction * splits_here[segment]
        order = _argsort_rows(key)
        points = points.gather(1, order.unsqueeze(-1).expand(-1, -1, n_dims))
        permutation = permutation.gather(1, order)
    return permutation


@dataclass
class _Blocks:
    """Each member's points in blocks of B (one set of blocks per sample, concatenated).

    Positions: point r of block b of member g is position (g * n_blocks + b) * B + r. Slots past
    the end of a sample's last block are phantoms: copies of a real point of the same block (so
    they leave the bounding box unchanged), excluded from every distance (set to inf).
    """

    coordinates: torch.Tensor  # (d, G * n_blocks, B), compute dtype
    points: torch.Tensor  # (G * n_blocks, B, d), the same
    low: torch.Tensor  # (G, n_blocks, d) bounding boxes
    high: torch.Tensor
    valid: torch.Tensor  # (n_blocks, B) bool, the same for every member
    block_sample: torch.Tensor  # (n_blocks,) which sample a block holds
    original_index: torch.Tensor  # (G, n_blocks * B) index into the member's sample, -1: phantom
    n_members: int
    n_blocks: int
    block_size: int

    @functools.cached_property
    def phantom_blocks(self) -> list[int]:
        return [int(b) for b in torch.nonzero(~self.valid.all(1)).flatten().tolist()]

    @functools.cached_property
    def position_valid(self) -> torch.Tensor:
        return self.valid.flatten().repeat(self.n_members)


def _make_blocks(samples: list[torch.Tensor], block_size: int, dtype: torch.dtype) -> _Blocks:
    """kd blocks of each sample of each member; samples: list of (G, n_s, d) tensors."""
    n_members, _, n_dims = samples[0].shape
    device = samples[0].device
    blocks, valid, block_sample, original = [], [], [], []
    offset = 0
    for sample_index, sample in enumerate(samples):
        n_points = sample.shape[1]
        n_blocks = -(-n_points // block_size)
        permutation = _kd_permutation(sample, block_size)
        padded = n_blocks * block_size
        # Phantom slots repeat the first point of the sample's last block.
        fill = torch.arange(padded, device=device).clamp(max=n_points - 1)
        fill[n_points:] = (n_blocks - 1) * block_size
        slot_permutation = permutation[:, fill]
        blocks.append(
            sample.to(dtype)
            .gather(1, slot_permutation.unsqueeze(-1).expand(-1, -1, n_dims))
            .view(n_members, n_blocks, block_size, n_dims)
        )
        slot_valid = torch.arange(padded, device=device) < n_points
        valid.append(slot_valid.view(n_blocks, block_size))
        block_sample.append(torch.full((n_blocks,), sample_index, device=device))
        original.append(torch.where(slot_valid, slot_permutation + offset, -1))
        offset += n_points
    points = torch.cat(blocks, 1)  # (G, NB, B, d)
    n_blocks = points.shape[1]
    return _Blocks(
        coordinates=points.permute(3, 0, 1, 2).reshape(n_dims, n_members * n_blocks, block_size),
        points=points.reshape(n_members * n_blocks, block_size, n_dims),
        low=points.amin(2),
        high=points.amax(2),
        valid=torch.cat(valid),
        block_sample=torch.cat(block_sample),
        original_index=torch.cat(original, 1),
        n_members=n_members,
        n_blocks=n_blocks,
        block_size=block_size,
    )


def _correctly_rounded_sqrt_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place square root, correctly rounded on every device.

    torch's float64 sqrt on the AVX-512 CPU build is off by an ulp for ~1 % of inputs, which
    could make d_ij differ from d_ji or between two computations of one pair; numpy's is the
    IEEE operation (and faster). CUDA's sqrt is IEEE.
    """
    if tensor.device.type == "cpu":
        array = tensor.numpy()
        numpy.sqrt(array, out=array)
        return tensor
    return tensor.sqrt_()


def _box_distances(blocks: _Blocks, metric: str) -> torch.Tensor:
    """(G, NB, NB) distance between bounding boxes: never above the computed distance of any
    pair of points in them (the same per-coordinate operations, all monotone)."""
    result = None
    for dim in range(blocks.low.shape[-1]):
        low, high = blocks.low[..., dim], blocks.high[..., dim]
        gap = torch.maximum(low[:, None, :] - high[:, :, None], low[:, :, None] - high[:, None, :])
        gap = gap.clamp(min=0.0)
        if metric == _EUCLIDEAN:
            gap = gap * gap
            result = gap if result is None else result + gap
        else:
            result = gap if result is None else torch.maximum(result, gap)
    return _correctly_rounded_sqrt_(result) if metric == _EUCLIDEAN else result


def _tile_distances(
    blocks: _Blocks, row_blocks, column_blocks, metric: str, out=None, scratch=None
) -> torch.Tensor:
    """(B_col, P, B_row) distances of the tiles (global row block, global column block).

    Exact: explicit differences coordinate by coordinate (below _FUSED_DISTANCE_FROM_DIMS
    coordinates), or torch.cdist's direct kernel; never the matmul formula. One function of the
    pair wherever it is computed, so d_ij == d_ji bitwise and every inclusion decision is taken
    on identical numbers. The point itself and phantom slots get +inf. `out` and `scratch`
    (optional) are (B_col, P, B_row) arrays to use.
    """
    block_size, n_tiles = blocks.block_size, row_blocks.numel()
    shape = (block_size, n_tiles, block_size)
    if out is None:
        out = torch.empty(shape, dtype=blocks.coordinates.dtype, device=row_blocks.device)
    result = out
    if blocks.points.shape[-1] >= _FUSED_DISTANCE_FROM_DIMS:
        fused = torch.cdist(
            blocks.points[column_blocks], blocks.points[row_blocks],
            p=2.0 if metric == _EUCLIDEAN else math.inf, compute_mode="donot_use_mm_for_euclid_dist",
        )  # (P, B_col, B_row)
        result.copy_(fused.permute(1, 0, 2))
    else:
        for dim, coordinate in enumerate(blocks.coordinates):  # (G * NB, B)
            difference = result if dim == 0 else (torch.empty_like(result) if scratch is None else scratch)
            column = coordinate[column_blocks].t().unsqueeze(2)  # (B_col, P, 1)
            torch.sub(column, coordinate[row_blocks].unsqueeze(0), out=difference)
            if metric == _EUCLIDEAN:
                difference.mul_(difference)
                if dim:
                    result.add_(difference)
            else:
                difference.abs_()
                if dim:
                    torch.maximum(result, difference, out=result)
        if metric == _EUCLIDEAN:
            _correctly_rounded_sqrt_(result)
    slots = torch.arange(block_size, device=result.device)
    diagonal = torch.nonzero(row_blocks == column_blocks).flatten()
    if diagonal.numel():
        result[slots[:, None], diagonal[None, :], slots[:, None]] = math.inf
    for phantom_block in blocks.phantom_blocks:
        phantom_slots = torch.nonzero(~blocks.valid[phantom_block]).flatten()
        as_column = torch.nonzero(column_blocks % blocks.n_blocks == phantom_block).flatten()
        if as_column.numel():
            result[phantom_slots[:, None], as_column[None, :]] = math.inf
        as_row = torch.nonzero(row_blocks % blocks.n_blocks == phantom_block).flatten()
        if as_row.numel():
            result[:, as_row[:, None], phantom_slots[None, :]] = math.inf
    return result


@dataclass
class _Tiles:
    """The kept tiles, in (member, row block, column block) order."""

    row_blocks: torch.Tensor  # (P,) global row block
    column_blocks: torch.Tensor  # (P,) global column block
    offsets: list[int]  # first tile of each global row block, and the total (G * NB + 1)
    index: torch.Tensor  # (G * NB, NB) tile of (global row block, column block), -1 if not kept

    @classmethod
    def kept(cls, keep: torch.Tensor) -> "_Tiles":
        n_members, n_blocks, _ = keep.shape
        member, row, column = torch.nonzero(keep, as_tuple=True)
        offsets = [0] + keep.sum(-1).flatten().cumsum(0).tolist()
        index = torch.full(keep.shape, -1, dtype=torch.long, device=keep.device)
        index[keep] = torch.arange(member.numel(), device=keep.device)
        return cls(member * n_blocks + row, member * n_blocks + column, offsets,
                   index.view(n_members * n_blocks, n_blocks))

    def chunks(self, first_row_block: int, last_row_block: int, max_tiles: int):
        """Consecutive ranges [first, last) of row blocks holding at most `max_tiles` tiles (at
        least one row block each)."""
        offsets = self.offsets
        first = first_row_block
        while first < last_row_block:
            last = first + 1
            while last < last_row_block and offsets[last + 1] - offsets[first] <= max_tiles:
                last += 1
            yield first, last
            first = last


# --------------------------------------------------------------------------------------
# k nearest neighbours
# --------------------------------------------------------------------------------------


def _k_smallest_(candidates: torch.Tensor, k: int):
    """The k smallest values of each row (ascending) and their columns; overwrites `candidates`.

    k passes of a row minimum: much faster than torch.topk / kthvalue for small k on the CPU.
    """
    n_rows = candidates.shape[0]
    values = candidates.new_empty((n_rows, k))
    columns = torch.empty((n_rows, k), dtype=torch.long, device=candidates.device)
    for q in range(k):
        value, column = candidates.min(-1)
        values[:, q], columns[:, q] = value, column
        candidates.scatter_(1, column[:, None], math.inf)
    return values, columns


def _kth_smallest_distinct_(distances: torch.Tensor, k: int) -> torch.Tensor:
    """An upper bound on each row's k-th smallest distance: the k-th smallest DISTINCT value
    (inf if there are fewer), over all axes but the last two of (..., row blocks, B_row).

    k passes of a minimum that then removes every entry equal to it (cheaper than extracting
    one entry at a time). Overwrites `distances`.
    """
    reduce_over = tuple(range(distances.ndim - 2))
    for _ in range(k):
        smallest = distances.amin(reduce_over, keepdim=True)
        distances.masked_fill_(distances <= smallest, math.inf)
    return smallest.view(distances.shape[-2:])


def _k_nearest(blocks: _Blocks, k: int, metric: str, box_distances, workspace: _Workspace, chunk_entries):
    """The k smallest distances (ascending) of every position and their global positions.

    Stage 0: an upper bound u_i on row i's k-th distance: the k-th smallest distance to the
    points of its own block and of the nearest *full* other block (>= k + 1 real points between
    them). Stage 1: every point within u_i lies in a tile whose box distance is at most the row
    block's largest bound; those few candidates of each row (typically 2-4 k) are compacted and
    the k smallest taken. Phantom rows get inf.
    """
    n_members, n_blocks, block_size = blocks.n_members, blocks.n_blocks, blocks.block_size
    device = box_distances.device
    n_row_blocks = n_members * n_blocks
    all_blocks = torch.arange(n_row_blocks, device=device)
    others = box_distances.clone()
    others[:, ~blocks.valid.all(1)] = math.inf  # only full blocks as partners
    others.diagonal(dim1=1, dim2=2).fill_(math.inf)
    nearest_distance, partner = others.min(-1)
    has_partner = torch.isfinite(nearest_distance).flatten()
    partner = torch.where(has_partner, partner.flatten() + (all_blocks // n_blocks) * n_blocks, all_blocks)
    distances = _tile_distances(
        blocks, torch.cat([all_blocks, all_blocks]), torch.cat([all_blocks, partner]), metric
    )
    distances[:, n_row_blocks:][:, ~has_partner] = math.inf  # no second copy of the own tile
    row_bound = _kth_smallest_distinct_(distances.view(block_size, 2, n_row_blocks, block_size), k)
    row_bound = row_bound.flatten().masked_fill(~blocks.position_valid, -math.inf)
    # The tile test compares box distances computed differently: a margin for rounding.
    block_bound = row_bound.view(n_row_blocks, block_size).amax(-1)
    block_bound = block_bound * (1.0 + 1024 * torch.finfo(row_bound.dtype).eps)
    tiles = _Tiles.kept(box_distances <= block_bound.view(n_members, n_blocks, 1))

    n_positions = n_row_blocks * block_size
    nearest = torch.full((n_positions, k), math.inf, dtype=distances.dtype, device=device)
    nearest_position = torch.zeros((n_positions, k), dtype=torch.long, device=device)
    per_chunk = max(chunk_entries // block_size**2, 1)
    for first, last in tiles.chunks(0, n_row_blocks, per_chunk):
        tile_0, tile_1 = tiles.offsets[first], tiles.offsets[last]
        rows, columns = tiles.row_blocks[tile_0:tile_1], tiles.column_blocks[tile_0:tile_1]
        shape = (block_size, tile_1 - tile_0, block_size)
        chunk = _tile_distances(
            blocks, rows, columns, metric, out=workspace.get(0, shape), scratch=workspace.get(1, shape)
        )
        within = chunk <= row_bound.view(-1, block_size)[rows].unsqueeze(0)  # (B_col, P, B_row)
        tile, row_slot, column_slot = torch.nonzero(within.permute(1, 2, 0), as_tuple=True)
        counts = torch.bincount(tile * block_size + row_slot, minlength=(tile_1 - tile_0) * block_size)
        counts = counts.view(tile_1 - tile_0, block_size)
        # Slot of each candidate in its row's list: its rank within (tile, row) plus the
        # candidates of the row in the row block's earlier tiles.
        group_start = counts.flatten().cumsum(0) - counts.flatten()
        rank_in_group = torch.arange(tile.numel(), device=device) - group_start[tile * block_size + row_slot]
        earlier = counts.cumsum(0) - counts
        first_tile = torch.tensor(tiles.offsets[first:last], device=device)[rows - first] - tile_0
        earlier = earlier - earlier[first_tile]
        slot = earlier[tile, row_slot] + rank_in_group
        row = (rows[tile] - first) * block_size + row_slot
        n_rows = (last - first) * block_size
        width = max(int(torch.bincount(row, minlength=n_rows).max()), k)
        short_list = workspace.get(2, (n_rows, width)).fill_(math.inf)
        short_list[row, slot] = chunk[column_slot, tile, row_slot]
        short_position = torch.zeros((n_rows, width), dtype=torch.long, device=device)
        short_position[row, slot] = columns[tile] * block_size + column_slot
        values, index = _k_smallest_(short_list, k)
        span = slice(first * block_size, last * block_size)
        nearest[span] = values
        nearest_position[span] = short_position.gather(1, index)
    return nearest, nearest_position
