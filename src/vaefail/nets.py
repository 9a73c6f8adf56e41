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
    return torch.nn.functional.leaky_relu(x, LEAKY_SLOPE)


@dataclass(frozen=True)
class Segment:
    """Where one tensor of a member's parameters lies in its flat row."""

    offset: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class FlatParameters:
    """Named parameter tensors of M members laid out in one (M, P) tensor.

    `views[name]` are leaf tensors that share storage with `flat`; their `.grad` are
    views into `grad`, so autograd accumulates every gradient into one flat buffer.
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
        self.flat = torch.zeros(n_members, offset, dtype=dtype, device=device)
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


def uniform_init(params: FlatParameters, bounds: torch.Tensor,
                 generators: list[torch.Generator], rows: list[int] | None = None) -> None:
    """Draw U(-bound, bound) for each member from its own generator (nn.Linear's default)."""
    rows = range(params.n_members) if rows is None else rows
    for m in rows:
        u = torch.rand(params.size, generator=generators[m], dtype=torch.float64)
        row = ((2 * u - 1) * bounds).to(params.flat.dtype)
        with torch.no_grad():
            params.flat[m, : params.size].copy_(row.to(params.flat.device))


class MaskedAdam:
    """Adam on a flat (M, P) tensor with a per-member update mask and step count.

    Uses PyTorch's fused Adam kernel, so each member is updated exactly as
    `torch.optim.Adam(fused=True)` would update it alone (test_adam_matches_torch).
    While every member has taken the same number of steps, one kernel call updates the
    whole flat tensor; once masks make step counts differ (LIN's aggressive phase), the
    kernel gets one row per updated member.  A masked member's parameters, moments and
    step count stay exactly as they were, NaN gradients of failed members included.
    """

    def __init__(self, params: FlatParameters, lr: float = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8):
        self.params = params
        self.hyper = dict(lr=lr, beta1=betas[0], beta2=betas[1], weight_decay=0.0, eps=eps,
                          amsgrad=False, maximize=False)
        self.exp_avg = torch.zeros_like(params.flat)
        self.exp_avg_sq = torch.zeros_like(params.flat)
        M = params.n_members
        self._shared_step = torch.zeros((), dtype=torch.float32, device=params.flat.device)
        self._row_steps: list[torch.Tensor] | None = None   # per member, once steps differ
        self._rows = [[t[m] for m in range(M)]
                      for t in (params.flat, params.grad, self.exp_avg, self.exp_avg_sq)]

    @property
    def steps(self) -> torch.Tensor:
        """(M,) number of updates each member has received."""
        if self._row_steps is None:
            return self._shared_step.expand(self.params.n_members).cpu().clone()
        return torch.stack(self._row_steps).cpu()

    @torch.no_grad()
    def step(self, mask: torch.Tensor) -> None:
        """mask: (M,) bool, True for members to update."""
        mask = mask.cpu()
        if self._row_steps is None and bool(mask.all()):
            self._shared_step += 1
            torch._fused_adam_([self.params.flat], [self.params.grad], [self.exp_avg],
                               [self.exp_avg_sq], [], [self._shared_step], **self.hyper)
            return
        if self._row_steps is None:
            self._row_steps = [self._shared_step.clone() for _ in range(self.params.n_members)]
        members = mask.nonzero().flatten().tolist()
        if not members:
            return
        steps = [self._row_steps[m] for m in members]
        torch._foreach_add_(steps, 1)
        p, g, m1, m2 = ([rows[m] for m in members] for rows in self._rows)
        torch._fused_adam_(p, g, m1, m2, [], steps, **self.hyper)
