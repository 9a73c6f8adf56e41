"""Ensembles of small MLPs trained side by side as one batched model.

M members share an architecture; member m's parameters are row m of one flat
tensor of shape (M, P).  Each layer's weights are a strided view of that row block,
so a forward pass is one batched matmul (`baddbmm`) per layer for all members, and
an optimiser step is a handful of elementwise operations on the flat tensor.
Members never mix: every operation is either per member or elementwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LEAKY_SLOPE = 0.01  # PyTorch's default negative slope for leaky ReLU.


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU in place on a fresh layer output x (no new tensor: one pass less over memory).

    Also under autograd: baddbmm's backward does not need its output, and the in-place
    leaky ReLU's backward reads the sign from its result, which has the input's sign for a
    positive slope: the same gradient, bit for bit."""
    return torch.nn.functional.leaky_relu_(x, LEAKY_SLOPE)


@dataclass(frozen=True)
class Segment:
    """Where one tensor of a member's parameters lies in its flat row."""

    offset: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


# Each member's row of `flat` is padded to a multiple of this many elements (64 bytes in
# float32), so that every member's parameters start equally aligned: an odd row length made
# vectorised kernels round members at even and odd positions differently (float32: a member's
# numbers depended on its position in the ensemble).
ROW_ALIGNMENT = 16


class FlatParameters:
    """Named parameter tensors of M members laid out in one (M, P) tensor.

    `views[name]` are leaf tensors that share storage with `flat`; their `.grad` are
    views into `grad`, so autograd accumulates every gradient into one flat buffer.
    `size` is the number of parameters of a member; `flat` has a few more columns of zeros
    (ROW_ALIGNMENT), which no view covers and no gradient or Adam step changes.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], n_members: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.segments: dict[str, Segment] = {}
        offset = 0
        for name, shape in shapes.items():
            self.segments[name] = Segment(offset, tuple(shape))
            offset += math.prod(shape)
        self.n_members = n_members
        self.size = offset
        padded = -(-offset // ROW_ALIGNMENT) * ROW_ALIGNMENT
        self.flat = torch.zeros(n_members, padded, dtype=dtype, device=device)
        self.grad = torch.zeros_like(self.flat)
        self.views: dict[str, torch.Tensor] = {}
        for name, seg in self.segments.items():
            view = self.flat[:, seg.offset:seg.offset + seg.size].view(n_members, *seg.shape)
            view.requires_grad_(True)
            view.grad = self.grad[:, seg.offset:seg.offset + seg.size].view(n_members, *seg.shape)
            self.views[name] = view

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.views[name]

    def set_requires_grad(self, flag: bool) -> None:
        for view in self.views.values():
            view.requires_grad_(flag)

    def zero_grad(self) -> None:
        self.grad.zero_()

    def member_state(self, m: int) -> torch.Tensor:
        return self.flat[m].detach().clone()


class StackedMLP:
    """M independent MLPs `sizes[0] -> ... -> sizes[-1]` with leaky-ReLU hidden layers."""

    def __init__(self, sizes: list[int], prefix: str):
        self.sizes = list(sizes)
        self.prefix = prefix

    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for i, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            shapes[f"{self.prefix}W{i}"] = (n_in, n_out)
            shapes[f"{self.prefix}b{i}"] = (1, n_out)
        return shapes

    def init_bounds(self, params: FlatParameters) -> torch.Tensor:
        """Per-entry bound of nn.Linear's default uniform init, 1/sqrt(fan_in)."""
        bounds = torch.zeros(params.size, dtype=torch.float64)
        for i, n_in in enumerate(self.sizes[:-1]):
            for name in (f"{self.prefix}W{i}", f"{self.prefix}b{i}"):
                seg = params.segments[name]
                bounds[seg.offset:seg.offset + seg.size] = 1.0 / math.sqrt(n_in)
        return bounds

    def __call__(self, params: FlatParameters, h: torch.Tensor) -> torch.Tensor:
        """h: (M, rows, sizes[0]) -> (M, rows, sizes[-1])."""
        n_layers = len(self.sizes) - 1
        for i in range(n_layers):
            h = torch.baddbmm(params[f"{self.prefix}b{i}"], h, params[f"{self.prefix}W{i}"])
            if i < n_layers - 1:
                h = leaky_relu(h)
        return h


def uniform_init(params: FlatParameters, bounds: torch.Tensor, uniforms: torch.Tensor) -> None:
    """nn.Linear's default init, U(-bound, bound) per entry, from U(0, 1) draws `uniforms`
    of shape (M, P): one row per member, from that member's own random stream."""
    with torch.no_grad():
        rows = (2 * uniforms.to(torch.float64) - 1) * bounds.to(uniforms.device)
        params.flat[:, :params.size].copy_(rows.to(params.flat.dtype).to(params.flat.device))


def random_init(params: FlatParameters, bounds: torch.Tensor, streams, purpose: str) -> None:
    """uniform_init with each member's uniforms from its own stream (a MemberStreams)."""
    uniform_init(params, bounds, streams.uniform(purpose, (), (params.size,), torch.float64))


class MaskedAdam:
    """Adam on a flat (M, P) tensor with a per-member update mask and step count.

    Each member is updated exactly as `torch.optim.Adam(fused=True)` would update it alone
    (test_adam_matches_torch).  While every member updates at every step, PyTorch's fused
    kernel updates the whole flat tensor at once.  Once a `mask` leaves some members out of a
    step (LIN's aggressive phase), step counts differ and the update is written out in tensor
    operations with each member's own count, applied where the mask is set; the mask may stay
    on the device.  On a GPU the written-out update is used from the first step, so that no
    step waits for the host.  `frozen` members (failed ones) are left exactly as they were,
    NaN gradients included, without moving the others off the path they are on: a member's
    numbers never depend on whether another member failed.
    """

    def __init__(self, params: FlatParameters, lr: float = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8):
        self.params = params
        self.lr, self.beta1, self.beta2, self.eps = lr, betas[0], betas[1], eps
        self.exp_avg = torch.zeros_like(params.flat)
        self.exp_avg_sq = torch.zeros_like(params.flat)
        device = params.flat.device
        self._shared_step = torch.zeros((), dtype=torch.float32, device=device)
        # (M, 1) per-member step counts, once they may differ (and always on a GPU)
        self._member_steps: torch.Tensor | None = (
            None if device.type == "cpu" else torch.zeros(params.n_members, 1, dtype=torch.float32, device=device))
        # fused steps a frozen member sat out: it keeps the shared count (a failed member never
        # steps again), so its count is reported less these
        self._sat_out = torch.zeros(params.n_members, dtype=torch.float32)

    @property
    def steps(self) -> torch.Tensor:
        """(M,) number of updates each member has received."""
        if self._member_steps is None:
            return self._shared_step.expand(self.params.n_members).cpu() - self._sat_out
        return self._member_steps.view(-1).cpu() - self._sat_out

    @torch.no_grad()
    def step(self, mask: torch.Tensor | None = None, frozen: torch.Tensor | None = None) -> None:
        """mask: (M,) bool, True for members that take this step (None: all); frozen: (M,)
        bool, members left untouched (failed ones)."""
        device = self.params.flat.device
        if self._member_steps is None and (mask is None or bool(mask.all())):
            self._fused_step(None if frozen is None or not bool(frozen.any()) else frozen.cpu())
            return
        if self._member_steps is None:
            self._member_steps = self._shared_step.expand(self.params.n_members, 1).clone()
        update = torch.ones(self.params.n_members, dtype=torch.bool, device=device) if mask is None else mask
        if frozen is not None:
            update = update & ~frozen
        self._masked_update(update.to(device).view(-1, 1))

    def _fused_step(self, frozen: torch.Tensor | None) -> None:
        """torch's fused Adam on every row (the CPU, equal step counts); frozen rows are
        restored afterwards, so the others go through the very same kernel call."""
        p, g, m1, m2 = self.params.flat, self.params.grad, self.exp_avg, self.exp_avg_sq
        if frozen is not None:
            rows = frozen.nonzero().flatten()
            kept = [t[rows].clone() for t in (p, m1, m2)]
            g[rows] = 0.0
            self._sat_out[rows] += 1
        self._shared_step += 1
        torch._fused_adam_([p], [g], [m1], [m2], [], [self._shared_step], lr=self.lr, beta1=self.beta1,
                           beta2=self.beta2, weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)
        if frozen is not None:
            for t, saved in zip((p, m1, m2), kept):
                t[rows] = saved

    def _masked_update(self, update: torch.Tensor) -> None:
        """Adam as torch's fused kernel writes it, per member, where `update` (M, 1) is set."""
        p, g, m1, m2 = self.params.flat, self.params.grad, self.exp_avg, self.exp_avg_sq
        self._member_steps.add_(update.to(self._member_steps.dtype))
        steps = self._member_steps
        g = torch.where(update, g, 0.0)          # masked rows may hold NaN gradients
        new_m1 = torch.lerp(m1, g, 1 - self.beta1)
        new_m2 = m2 * self.beta2 + (1 - self.beta2) * g * g
        # bias corrections in float64, as the fused kernel computes them
        bias_correction1 = (1 - self.beta1 ** steps.double()).to(p.dtype)
        bias_correction2_sqrt = (1 - self.beta2 ** steps.double()).sqrt().to(p.dtype)
        denom = new_m2.sqrt() / bias_correction2_sqrt + self.eps
        new_p = p - (self.lr / bias_correction1) * new_m1 / denom
        p.copy_(torch.where(update, new_p, p))
        m1.copy_(torch.where(update, new_m1, m1))
        m2.copy_(torch.where(update, new_m2, m2))
