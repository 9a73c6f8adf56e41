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
tensors.  On the eager path each 32x32-bit product is split into 32x16-bit halves (every
partial product stays below 2^48: no overflow, no reliance on wrap-around); the compiled
kernels take the whole product in one int64 multiply, whose wrap-around keeps all 64 bits.

Speed on the CPU.  Written as tensor operations, one Philox block costs ~200 passes over the
buffer (~190 ns a block here).  `torch.compile` fuses the rounds and the exact conversion to
uniforms (or to sort keys) into one vectorised loop (~5 ns a block).  Of Box-Muller, log, sqrt,
cos and sin stay eager float64 operations, because compiled they round differently in the last
bit (torch's eager sqrt is not even the correctly rounded one); only the products, the rounding
to float32 and the interleaving are compiled.  So the numbers are the same bits whichever path
made them (tests/test_randomness.py checks it).  Permutations sort on the CPU with numpy's
vectorised sort (argsort_composites).  Compiling costs seconds (here ~27 s cold, ~5 s from the
on-disk inductor cache, per process), so by default (`auto`) a process draws eagerly until it
has made COMPILE_AFTER_BLOCKS blocks, and compiles then; a compile that fails leaves the eager
path in place.  The environment variable VAEFAIL_RNG (auto | compiled | eager) or
`set_backend` chooses.  Other devices always take the eager path (one pass per operation).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from typing import Sequence

import numpy as np
import torch
import torch.fx.experimental._config

log = logging.getLogger(__name__)

MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57   # round multipliers
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85   # key schedule (golden ratio, sqrt 3 - 1)
PHILOX_ROUNDS = 10
_TWO_POW_52 = float(2 ** 52)
_CPU_BLOCKS_PER_SLICE = 1 << 16   # int64 words per buffer: 512 KiB, in the L2 cache
BACKENDS = ("auto", "compiled", "eager")
BACKEND_ENV = "VAEFAIL_RNG"
# `auto` compiles once a process has drawn this many blocks eagerly (~6 s of eager work here,
# about what a compile from the on-disk cache costs): a short job never pays for a compile,
# a long one pays at most about twice the better choice.
COMPILE_AFTER_BLOCKS = 1 << 25
# Below this many pairs, Box-Muller's products are cheaper eagerly than through one more call
# of compiled code (~45 us of overhead per call here).
_COMPILED_PRODUCTS_FROM = 1 << 15


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


def _mulhilo(a: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) words of a * multiplier for the compiled kernels: one 64-bit product.  It is
    below 2^64, so int64's wrap-around keeps all its bits (the sign bit holds bit 63) and the
    masks recover both words; one multiply instead of _mulhilo_into's two halves, a quarter
    less time per block.  (The compiled code wraps, as the eager = compiled tests check; the
    eager path keeps the split, which relies on nothing.)"""
    product = a * multiplier
    return (product >> 32) & MASK32, product & MASK32


def round_keys(key: torch.Tensor) -> torch.Tensor:
    """(M, 2) key words -> (M, 2 * PHILOX_ROUNDS): the key of every round, (k0, k1) per round."""
    bumps = torch.arange(PHILOX_ROUNDS, dtype=torch.int64, device=key.device)
    k0 = (key[:, :1] + bumps * _PHILOX_W0) & MASK32
    k1 = (key[:, 1:] + bumps * _PHILOX_W1) & MASK32
    return torch.stack([k0, k1], -1).reshape(len(key), 2 * PHILOX_ROUNDS)


def _philox_blocks(keys: torch.Tensor, position: torch.Tensor, stream: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 blocks at counters (position, stream) for M keys, in expression form (what
    torch.compile fuses into one loop): keys (M, 2 * PHILOX_ROUNDS) from round_keys, position (n,)
    int64 block numbers, stream (2,) the stream_id words -> four (M, n) word tensors."""
    c0 = (position & MASK32).unsqueeze(0)
    c1 = ((position >> 32) & MASK32).unsqueeze(0)
    c2, c3 = stream[0], stream[1]
    for r in range(PHILOX_ROUNDS):
        k0, k1 = keys[:, 2 * r:2 * r + 1], keys[:, 2 * r + 1:2 * r + 2]
        hi0, lo0 = _mulhilo(c0, _PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _uniform_from_words(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """(k + 1/2) / 2^52 with k from 26 + 26 bits of two words: exact in float64."""
    k = (high >> 6) * (1 << 26) + (low >> 6)
    return (k.to(torch.float64) + 0.5) / _TWO_POW_52


def _sort_keys_from_words(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """63-bit non-negative sort keys from two words."""
    return (high << 31) | (low >> 1)


def _uniform_kernel(keys, position, stream, second_scale) -> tuple[torch.Tensor, torch.Tensor]:
    """The two uniforms of each block, (M, n) each, the second times `second_scale` (a 0-d
    float64 tensor: 1 for uniforms, 2 pi for Box-Muller's angle; one rounded product either
    way, as eagerly)."""
    w = _philox_blocks(keys, position, stream)
    return _uniform_from_words(w[0], w[1]), _uniform_from_words(w[2], w[3]) * second_scale


def _box_muller_kernel(radius, cos_angle, sin_angle, dtype: torch.dtype) -> torch.Tensor:
    """The products of Box-Muller, rounded to `dtype` and interleaved: (N, 2).  Products and
    rounding are correctly rounded operations, so compiled they give the eager bits.  (Rounded
    before they are interleaved: twice as fast here as the other way round.)"""
    return torch.stack([(radius * cos_angle).to(dtype), (radius * sin_angle).to(dtype)], -1)


def _sort_key_kernel(keys, position, stream, index_bits) -> torch.Tensor:
    """Sort composites of the two keys of each block, (M, n, 2): the key's bits above
    `index_bits` (a 0-d tensor) over the element's number 2 * position + (0, 1) (see
    argsort_composites).  The element numbers assume the blocks start at block 0."""
    w = _philox_blocks(keys, position, stream)
    element = 2 * position.unsqueeze(0)
    return torch.stack([_composite(_sort_keys_from_words(w[0], w[1]), index_bits, element),
                        _composite(_sort_keys_from_words(w[2], w[3]), index_bits, element + 1)], -1)


def _composite(keys: torch.Tensor, index_bits, index: torch.Tensor) -> torch.Tensor:
    """keys with their low `index_bits` bits replaced by `index` (< 2^index_bits)."""
    return ((keys >> index_bits) << index_bits) | index


class _Backend:
    """Which path makes the Philox blocks on the CPU, and the compiled kernels (one per process,
    made on first use; dynamic shapes, so a new shape does not recompile)."""

    def __init__(self):
        self.mode = "auto"
        self.eager_blocks = 0        # blocks drawn eagerly so far (for `auto`)
        self.failed = False          # a compile failed: eager from then on
        self._kernels = {}

    def set(self, mode: str) -> str:
        if mode not in BACKENDS:
            raise ValueError(f"the random-number backend must be one of {', '.join(BACKENDS)}; got {mode!r}")
        previous, self.mode = self.mode, mode
        return previous

    def wants_compiled(self, device: torch.device, blocks: int) -> bool:
        if device.type != "cpu" or self.mode == "eager" or self.failed:
            return False
        if self.mode == "auto" and self.eager_blocks < COMPILE_AFTER_BLOCKS:
            self.eager_blocks += blocks
            return False
        return True

    def run(self, kernel, *args):
        """kernel(*args) compiled, or None if compiling failed (then the caller goes eager)."""
        try:
            compiled = self._kernels.get(kernel)
            if compiled is None:
                # Sizes that happen to be equal at the first call (say M = n) would otherwise be
                # assumed equal ("duck sizing"), and a later call would recompile.  Nothing else
                # in this project compiles, so the process-wide switch is safe here.
                torch.fx.experimental._config.use_duck_shape = False
                compiled = self._kernels[kernel] = torch.compile(kernel, dynamic=True, fullgraph=True)
            with torch.no_grad():
                return compiled(*args)
        except Exception as error:   # no compiler, an unsupported platform, ...: stay correct, get slower
            log.warning("compiling the random-number kernels failed (%s: %s); drawing eagerly",
                        type(error).__name__, error)
            self.failed = True
            return None

    def run_blocks(self, kernel, keys: torch.Tensor, position: torch.Tensor, *args):
        """run(kernel, keys, position, *args) for a kernel of (M, n) blocks.  Sizes 1 are
        padded to 2 (torch.compile specialises sizes 0 and 1: a recompile) and cut again."""
        M, n = keys.shape[0], position.shape[0]
        if M < 2:
            keys = torch.cat([keys, keys])
        if n < 2:
            position = torch.cat([position, position[-1:] + 1])
        out = self.run(kernel, keys, position, *args)
        if out is None or (M >= 2 and n >= 2):
            return out
        return tuple(o[:M, :n] for o in out) if isinstance(out, tuple) else out[:M, :n]


_backend = _Backend()
_backend.set(os.environ.get(BACKEND_ENV, "auto"))


def set_backend(mode: str) -> str:
    """How the CPU makes Philox blocks: 'auto' (compile once the process has drawn
    COMPILE_AFTER_BLOCKS blocks), 'compiled' (at once) or 'eager'.  Returns the previous mode.
    The numbers are the same bits whichever is used."""
    return _backend.set(mode)


@contextlib.contextmanager
def backend(mode: str):
    """set_backend(mode) within a `with` block."""
    previous = set_backend(mode)
    try:
        yield
    finally:
        set_backend(previous)


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
        self._round_keys = None

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
        first_block, first_block + 1, ... of the stream (purpose, index), eagerly (the draws
        below use the compiled kernels instead where the backend says so).

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

    def _compiled(self, kernel, purpose: str, index: Sequence[int], n_blocks: int, first_block: int, *more):
        """kernel(round keys, block numbers, stream words, *more) for blocks first_block, ...
        of the stream, compiled; None if compiling failed."""
        if self._round_keys is None:
            self._round_keys = round_keys(self.key)
        stream = torch.tensor(stream_id(f"{self.namespace}/{purpose}", index), dtype=torch.int64)
        position = torch.arange(first_block, first_block + n_blocks, dtype=torch.int64)
        return _backend.run_blocks(kernel, self._round_keys, position, stream, *more)

    def _use_compiled(self, n_blocks: int) -> bool:
        return _backend.wants_compiled(self.device, len(self) * n_blocks)

    # --- distributions -----------------------------------------------------------------
    # Element e of a stream comes from Philox block e // 2 (each block makes two uniforms, or
    # one Box-Muller pair of normals), so any slice of a stream can be drawn on its own
    # (`offset`): chunked evaluation draws the same numbers however it is chunked.
    def uniform(self, purpose: str, index: Sequence[int], shape: Sequence[int],
                dtype: torch.dtype = torch.float32, offset: int = 0) -> torch.Tensor:
        """U(0, 1), never exactly 0 or 1 (52-bit resolution): elements offset, offset + 1, ...
        of the stream, (M, *shape)."""
        def pairs(n_blocks, first_block):
            first, second = self._uniform_pairs(purpose, index, n_blocks, first_block,
                                                compiled=self._use_compiled(n_blocks))
            return torch.stack([first, second], -1).to(dtype)
        return self._elements(pairs, shape, offset)

    def normal(self, purpose: str, index: Sequence[int], shape: Sequence[int],
               dtype: torch.dtype = torch.float32, offset: int = 0) -> torch.Tensor:
        """Standard normal draws (Box-Muller on 52-bit uniforms, in float64): elements
        offset, offset + 1, ... of the stream, (M, *shape)."""
        def pairs(n_blocks, first_block):
            compiled = self._use_compiled(n_blocks)
            u, angle = self._uniform_pairs(purpose, index, n_blocks, first_block, 2.0 * math.pi, compiled)
            return _box_muller(u, angle, dtype, compiled and not _backend.failed)
        return self._elements(pairs, shape, offset)

    def permutation(self, purpose: str, index: Sequence[int], n: int) -> torch.Tensor:
        """A uniformly random permutation of range(n) per member, (M, n) int64: the argsort
        of 63-bit random keys (a tie, probability ~n^2 / 2^64, would fall back to index order)."""
        if self.device.type != "cpu":
            return torch.argsort(self._sort_keys(purpose, index, n), dim=1, stable=True)
        bits, n_blocks = index_bits(n), (n + 1) // 2
        composites = None
        if self._use_compiled(n_blocks):
            composites = self._compiled(_sort_key_kernel, purpose, index, n_blocks, 0, torch.tensor(bits))
        if composites is None:
            composites = _composite(self._sort_keys(purpose, index, n), bits, torch.arange(n))
        order, unsure = argsort_composites(composites.reshape(len(self), -1)[:, :n], bits)
        if len(unsure):
            rows = unsure.tolist()
            order[rows] = torch.argsort(self[rows]._sort_keys(purpose, index, n), dim=1, stable=True)
        return order

    def _sort_keys(self, purpose, index, n: int) -> torch.Tensor:
        """The permutation's 63-bit keys, (M, n), eagerly."""
        w = self.words(purpose, index, (n + 1) // 2)
        keys = torch.stack([_sort_keys_from_words(w[0], w[1]), _sort_keys_from_words(w[2], w[3])], -1)
        return keys.reshape(len(self), -1)[:, :n]

    def randint(self, purpose: str, index: Sequence[int], high: int, shape: Sequence[int]) -> torch.Tensor:
        """Integers uniform on range(high), (M, *shape) int64 (floor of high * U; the bias of
        a 52-bit uniform is below high / 2^52)."""
        u = self.uniform(purpose, index, shape, torch.float64)
        return torch.clamp((u * high).long(), max=high - 1)

    def _elements(self, pairs, shape, offset) -> torch.Tensor:
        """Elements offset, ... of a stream, (M, *shape), from pairs(n_blocks, first_block):
        (M, n_blocks, 2), element 2b + i of the stream at [:, b - first_block, i]."""
        n = math.prod(shape)
        first, last = offset // 2, (offset + n - 1) // 2
        values = pairs(last - first + 1, first).reshape(len(self), -1)
        if offset % 2 or values.shape[1] != n:
            values = values[:, offset % 2: offset % 2 + n]
        return values.reshape(len(self), *shape)

    def _uniform_pairs(self, purpose, index, n_blocks: int, first_block: int, second_scale: float = 1.0,
                       compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The two float64 uniforms (k + 1/2) / 2^52 of each block, (M, n_blocks) each, the
        second times second_scale: k uniform on [0, 2^52) from 26 + 26 bits of each half of a
        block, exact in float64, so never 0 or 1."""
        pairs = None
        if compiled:
            pairs = self._compiled(_uniform_kernel, purpose, index, n_blocks, first_block,
                                   torch.tensor(second_scale, dtype=torch.float64))
        if pairs is None:
            w = self.words(purpose, index, n_blocks, first_block)
            pairs = _uniform_from_words(w[0], w[1]), _uniform_from_words(w[2], w[3])
            if second_scale != 1.0:
                pairs[1].mul_(second_scale)
        return pairs


def _box_muller(u: torch.Tensor, angle: torch.Tensor, dtype: torch.dtype, compiled: bool) -> torch.Tensor:
    """(M, n) uniforms u and angles 2 pi u' in float64 -> (M, n, 2) normals
    (sqrt(-2 log u) cos angle, sqrt(-2 log u) sin angle) in `dtype`, computed in float64 (the
    inputs are overwritten).  log, sqrt, cos and sin run eagerly on either path: compiled,
    they round differently in the last bit (torch's eager float64 sqrt is not the correctly
    rounded one that compiled code uses)."""
    radius = u.log_().mul_(-2.0).sqrt_()
    cos_angle, sin_angle = torch.cos(angle), angle.sin_()
    if compiled and u.numel() >= _COMPILED_PRODUCTS_FROM:
        flat = [t.reshape(-1) for t in (radius, cos_angle, sin_angle)]
        if flat[0].shape[0] < 2:    # as run_blocks: no size-1 specialisation
            flat = [torch.cat([t, t.new_ones(1)]) for t in flat]
        out = _backend.run(_box_muller_kernel, *flat, dtype)
        if out is not None:
            return out[:u.numel()].reshape(*u.shape, 2)
    out = torch.empty(*radius.shape, 2, dtype=dtype, device=radius.device)
    torch.mul(radius, cos_angle, out=out[..., 0])    # a float64 product rounded once to dtype
    torch.mul(radius, sin_angle, out=out[..., 1])
    return out


def index_bits(n: int) -> int:
    """Bits that hold a column number of range(n)."""
    return max(1, (n - 1).bit_length())


def argsort_composites(composites: torch.Tensor, bits: int) -> tuple[torch.Tensor, np.ndarray]:
    """The argsort of each row of 63-bit keys (M, n) given as composites (each key's bits above
    `bits` over its column number, _composite), on the CPU; and the rows where that may differ
    from torch.argsort(keys, dim=1, stable=True), to be sorted again from the full keys.

    Composites are distinct, so numpy's unstable vectorised sort (~10x faster here than
    torch's stable one) orders them uniquely; where no two keys of a row share their high
    bits, that is the stable order of the keys too.  Rows where two neighbours' high bits
    differ by less than one unit (a tie or a near one: probability ~n^2 / 2^(63 - bits) for
    random keys) are returned as unsure."""
    ordered = np.sort(composites.numpy(), axis=1)
    order = torch.from_numpy(ordered & ((1 << bits) - 1))
    unsure = np.flatnonzero((np.diff(ordered, axis=1) < (1 << bits)).any(axis=1))
    return order, unsure
