"""Counter-based random numbers for ensembles: every member's draws at once, on any device.

A member's random numbers are a pure function of (its seed, a purpose, an index such as
(epoch, step), the element's position): the Philox4x32-10 block cipher of Salmon et al.
(2011, "Parallel random numbers: as easy as 1, 2, 3") keyed by the member's seed and applied
to a counter made of the other three.  So
  * all members' numbers come from one batch of tensor operations on the training device,
    with no generator to advance and no Python loop over members;
  * a member's numbers do not depend on which other members share its batch (batched
    training equals training alone), nor on the order in which draws are made;
  * integer arithmetic is exact, so the bits are the same on CPU and GPU; the float
    transforms (Box-Muller in float64) differ at most by the last bit of libm.

torch has no unsigned 32-bit multiply with a high word, so 32-bit words live in int64
tensors and each 32x32-bit product is split into 32x16-bit halves (every partial product
stays below 2^48: no overflow, no reliance on wrap-around).
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch

MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57   # round multipliers
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85   # key schedule (golden ratio, sqrt 3 - 1)
PHILOX_ROUNDS = 10
_TWO_POW_52 = float(2 ** 52)
_CPU_BLOCKS_PER_SLICE = 1 << 16   # int64 words per buffer: 512 KiB, in the L2 cache


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any sequence of printable parts."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _mulhilo_into(a: torch.Tensor, multiplier: int, hi: torch.Tensor, lo: torch.Tensor,
                  scratch: torch.Tensor) -> None:
    """hi, lo = the high and low 32-bit words of a * multiplier (a: 32-bit words, int64)."""
    torch.mul(a, multiplier & 0xFFFF, out=lo)                    # < 2^48
    torch.mul(a, multiplier >> 16, out=hi)                       # < 2^48
    hi.add_(scratch.copy_(lo).bitwise_right_shift_(16))          # a * m = hi * 2^16 + (lo & 0xFFFF)
    lo.bitwise_and_(0xFFFF).bitwise_or_(scratch.copy_(hi).bitwise_and_(0xFFFF).bitwise_left_shift_(16))
    hi.bitwise_right_shift_(16)


def philox4x32(counter: Sequence[torch.Tensor], key: Sequence[torch.Tensor],
               rounds: int = PHILOX_ROUNDS) -> list[torch.Tensor]:
    """Philox4x32-R: four 32-bit counter words (int64 tensors of one shape) and two key words
    (int64 tensors that broadcast against them) to four 32-bit output words.

    Each round: (hi0, lo0) = M0 * c0, (hi1, lo1) = M1 * c2,
    c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0), then the key is bumped by (W0, W1).
    Written with in-place operations on preallocated buffers (about 20 passes a round).
    """
    c0, c1, c2, c3 = (c.clone() for c in counter)
    k0, k1 = key
    hi0, lo0, hi1, lo1, scratch = (torch.empty_like(c0) for _ in range(5))
    for r in range(rounds):
        if r:
            k0 = (k0 + _PHILOX_W0) & MASK32
            k1 = (k1 + _PHILOX_W1) & MASK32
        _mulhilo_into(c0, _PHILOX_M0, hi0, lo0, scratch)
        _mulhilo_into(c2, _PHILOX_M1, hi1, lo1, scratch)
        torch.bitwise_xor(hi1, c1, out=c0).bitwise_xor_(k0)
        torch.bitwise_xor(hi0, c3, out=c2).bitwise_xor_(k1)
        c1.copy_(lo1)
        c3.copy_(lo0)
    return [c0, c1, c2, c3]


def stream_id(purpose: str, index: Sequence[int] = ()) -> tuple[int, int]:
    """Two 32-bit counter words naming one use of randomness, e.g. ('noise', (epoch,))."""
    h = derive_seed("stream", purpose, *index)
    return h & MASK32, (h >> 32) & MASK32


class MemberStreams:
    """Independent random streams for each of M ensemble members (one seed each).

    Every draw names its purpose and an index (e.g. ``normal('noise', (epoch,), shape)``);
    the same (seed, namespace, purpose, index, shape) always gives the same numbers.  Draws
    return (M, *shape) tensors on `device`.  ``streams[rows]`` are the streams of some
    members; ``streams.child(name)`` are fresh streams of the same members for a separate
    phase (e.g. evaluation), so that its purposes never reuse the training's numbers.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu", namespace: str = ""):
        self.seeds = [int(s) for s in seeds]
        if any(not 0 <= s < 2 ** 64 for s in self.seeds):
            raise ValueError(f"seeds must be integers in [0, 2^64); got {self.seeds}")
        self.device = torch.device(device)
        self.namespace = namespace
        words = torch.tensor([[s & MASK32, (s >> 32) & MASK32] for s in self.seeds], dtype=torch.int64)
        self.key = words.to(self.device)

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, rows) -> "MemberStreams":
        if isinstance(rows, torch.Tensor):
            rows = rows.tolist()
        if isinstance(rows, int):
            rows = [rows]
        return MemberStreams([self.seeds[r] for r in rows], self.device, self.namespace)

    def child(self, name: str) -> "MemberStreams":
        return MemberStreams(self.seeds, self.device, f"{self.namespace}/{name}")

    # --- raw bits ----------------------------------------------------------------------
    def words(self, purpose: str, index: Sequence[int], n_blocks: int, first_block: int = 0) -> list[torch.Tensor]:
        """Four (M, n_blocks) tensors of 32-bit words: the Philox blocks at positions
        first_block, first_block + 1, ... of the stream (purpose, index).

        On the CPU the blocks are made a cache-sized slice at a time (~3x faster than one pass
        over large tensors); a GPU takes them in one pass (fewer kernel launches)."""
        s0, s1 = stream_id(f"{self.namespace}/{purpose}", index)
        key = [self.key[:, :1], self.key[:, 1:]]
        M = len(self)
        out = [torch.empty(M, n_blocks, dtype=torch.int64, device=self.device) for _ in range(4)]
        step = n_blocks if self.device.type != "cpu" else max(1, _CPU_BLOCKS_PER_SLICE // max(M, 1))
        for start in range(0, n_blocks, step):
            stop = min(start + step, n_blocks)
            position = torch.arange(first_block + start, first_block + stop, dtype=torch.int64,
                                    device=self.device).expand(M, -1)
            counter = [position & MASK32, position >> 32,
                       torch.full_like(position, s0), torch.full_like(position, s1)]
            for o, w in zip(out, philox4x32(counter, key)):
                o[:, start:stop] = w
        return out

    # --- distributions -----------------------------------------------------------------
    # Element e of a stream comes from Philox block e // 2 (each block makes two uniforms, or
    # one Box-Muller pair of normals), so any slice of a stream can be drawn on its own
    # (`offset`): chunked evaluation draws the same numbers however it is chunked.
    def uniform(self, purpose: str, index: Sequence[int], shape: Sequence[int],
                dtype: torch.dtype = torch.float32, offset: int = 0) -> torch.Tensor:
        """U(0, 1), never exactly 0 or 1 (52-bit resolution): elements offset, offset + 1, ...
        of the stream, (M, *shape)."""
        return self._elements(self._uniform_pairs, purpose, index, shape, offset).to(dtype)

    def normal(self, purpose: str, index: Sequence[int], shape: Sequence[int],
               dtype: torch.dtype = torch.float32, offset: int = 0) -> torch.Tensor:
        """Standard normal draws (Box-Muller on 52-bit uniforms, in float64): elements
        offset, offset + 1, ... of the stream, (M, *shape)."""
        return self._elements(self._normal_pairs, purpose, index, shape, offset).to(dtype)

    def permutation(self, purpose: str, index: Sequence[int], n: int) -> torch.Tensor:
        """A uniformly random permutation of range(n) per member, (M, n) int64: the argsort
        of 63-bit random keys (a tie, probability ~n^2 / 2^64, would fall back to index order)."""
        w = self.words(purpose, index, (n + 1) // 2)
        keys = torch.stack([(w[0] << 31) | (w[1] >> 1), (w[2] << 31) | (w[3] >> 1)], -1)
        keys = keys.reshape(len(self), -1)[:, :n]
        return torch.argsort(keys, dim=1, stable=True)

    def randint(self, purpose: str, index: Sequence[int], high: int, shape: Sequence[int]) -> torch.Tensor:
        """Integers uniform on range(high), (M, *shape) int64 (floor of high * U; the bias of
        a 52-bit uniform is below high / 2^52)."""
        u = self.uniform(purpose, index, shape, torch.float64)
        return torch.clamp((u * high).long(), max=high - 1)

    def _elements(self, pairs, purpose, index, shape, offset) -> torch.Tensor:
        n = math.prod(shape)
        first, last = offset // 2, (offset + n - 1) // 2
        values = pairs(purpose, index, last - first + 1, first).reshape(len(self), -1)
        return values[:, offset % 2: offset % 2 + n].reshape(len(self), *shape)

    def _uniform_pairs(self, purpose, index, n_blocks: int, first_block: int) -> torch.Tensor:
        """(M, n_blocks, 2) float64 uniforms (k + 1/2) / 2^52, k uniform on [0, 2^52), from
        26 + 26 bits of each half of a block: exact in float64, so never 0 or 1."""
        w = self.words(purpose, index, n_blocks, first_block)
        halves = [(w[0] >> 6, w[1] >> 6), (w[2] >> 6, w[3] >> 6)]
        k = torch.stack([(high * (1 << 26) + low).to(torch.float64) for high, low in halves], -1)
        return (k + 0.5) / _TWO_POW_52

    def _normal_pairs(self, purpose, index, n_blocks: int, first_block: int) -> torch.Tensor:
        u = self._uniform_pairs(purpose, index, n_blocks, first_block)
        radius = torch.sqrt(-2.0 * torch.log(u[..., 0]))
        angle = (2.0 * math.pi) * u[..., 1]
        return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], -1)
