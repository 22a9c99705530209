"""Chapter 7: scans for the linear recurrence ``h_t = a_t * h_{t-1} + b_t`` (elementwise, time on dim 0).

A linear recurrence is a *scan* with the associative operator on pairs (coefficient, value)::

    (a1, b1) o (a2, b2) = (a1 * a2,  a2 * b1 + b2)              "apply step 1, then step 2"

so ``h_t = a*_t * h_0 + sum_{s <= t} (a*_t / a*_s) * b_s`` with ``a*_t = prod_{s <= t} a_s``. For ``a_t`` in
(0, 1] and ``b_t > 0`` (minGRU: ``a = 1 - z``, ``b = z * g(h~)``) Heinsen (2023) computes it in log space::

    A_t = cumsum_{s <= t} log a_s
    h_t = exp(A_t + logcumsumexp_{s <= t}(log b_s - A_s))       (h_0 > 0 enters as a term at s = 0)

which never forms ``1 / a*_s`` (it overflows) but subtracts two cumulative sums that grow like ``t``: in fp32
the result loses ``|A_t| * 2^-24`` of relative accuracy (:func:`heinsen_scan`, for the chapter).

:func:`mingru_scan` is the scan the library uses: a two-level (blocked) scan. Time is cut into blocks of ``C``
steps; inside every block, all blocks and all lanes at once, the log-space recurrence
``l_j = logaddexp(l_{j-1} + log a_j, log b_j)`` (a ``logcumsumexp`` relative to the block start, so ``|A|``
stays bounded by the block) and the block's decay ``exp(A_j)``; then a carry of ``T / C`` steps across blocks,
``h = exp(l) + exp(A) * h_{block start}``, which is linear in the carry, so any ``h_0`` (also negative) is
exact. Its backward is hand-written: the adjoint of a linear recurrence is the same recurrence run backward,
``g_t = dL/dh_t + a_{t+1} g_{t+1}``, in linear space (``a`` in [0, 1], so nothing overflows), then
``dL/da_t = g_t h_{t-1}``, ``dL/db_t = g_t``, ``dL/dh_0 = a_1 g_1``.

On the CPU in float32 and float64 the same blocks run as one C++ kernel (:func:`scan_kernel`,
``csrc/mingru_scan.cpp``): block summaries in log space, the carry, then every block rescanned from its start
state; :func:`_forward` and :func:`_backward` below are its PyTorch twin, used everywhere else.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn import functional as F

from gru_lib import native

__all__ = [
    "g",
    "log_g",
    "linear_scan_sequential",
    "heinsen_scan",
    "mingru_coefficients",
    "mingru_scan",
    "mingru_sequential",
    "default_block_size",
    "scan_kernel",
]


def g(x: Tensor) -> Tensor:
    """Feng et al.'s activation, positive everywhere: ``g(x) = x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` else."""
    return torch.where(x >= 0, x.clamp(min=0) + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """``log g(x)`` without ``log(0)``: ``log(x + 0.5)`` for ``x >= 0``, ``logsigmoid(x) = -softplus(-x)`` else."""
    return torch.where(x >= 0, x.clamp(min=0).add(0.5).log(), F.logsigmoid(x))


def mingru_coefficients(k: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """minGRU's recurrence ``h_t = (1 - z_t) h_{t-1} + z_t g(p_t)``, ``z = sigmoid(k)``, as (log a, log b).

    ``log z = logsigmoid(k)``; ``log(1 - z) = logsigmoid(-k) = log z - k``; ``log b = log z + log g(p)``:
    finite for every finite pre-activation (no ``log(0)``, even at ``k = +-1e4``)."""
    log_z = F.logsigmoid(k)
    return log_z - k, log_z + log_g(p)


def linear_scan_sequential(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """The reference: ``h_t = a_t * h_{t-1} + b_t`` as an explicit loop over dim 0 (autograd differentiates it)."""
    h = torch.zeros_like(b[0]) if h0 is None else h0
    out = []
    # unbind, not a[t]: the backward of T separate a[t] would write T full-size zero gradients, O(T^2) memory
    # traffic (minutes at T = 4096); unbind's backward stacks the T step gradients once.
    for a_t, b_t in zip(a.unbind(0), b.unbind(0)):
        h = torch.addcmul(b_t, a_t, h)
        out.append(h)
    return torch.stack(out)


def heinsen_scan(log_a: Tensor, log_b: Tensor, log_h0: Tensor | None = None) -> Tensor:
    """Heinsen's log-space scan over all of dim 0 at once (module docstring): ``h_t`` for ``h_0 = exp(log_h0)``
    (``h_0 = 0`` when ``log_h0`` is None). Plain ``cumsum`` + ``logcumsumexp``; autograd differentiates it."""
    if log_h0 is not None:
        log_a = torch.cat([torch.zeros_like(log_a[:1]), log_a])
        log_b = torch.cat([log_h0[None], log_b])
    a_star = torch.cumsum(log_a, dim=0)
    h = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=0))
    return h if log_h0 is None else h[1:]


def mingru_sequential(y: Tensor, h0: Tensor | None = None) -> Tensor:
    """minGRU's reference, the time loop of ``h_t = (1 - z_t) h_{t-1} + z_t g(p_t)``, ``z_t = sigmoid(k_t)``, for
    pre-activations ``y = [k | p]`` (T, ..., 2H) (a ``linear.weight`` with rows z|h~ gives them)."""
    k, p = y.chunk(2, dim=-1)
    z = torch.sigmoid(k)
    return linear_scan_sequential(1 - z, z * g(p), h0)


def default_block_size(steps: int) -> int:
    """Block length of the two-level scan: about ``sqrt(T)``, which balances the ``C`` steps inside the blocks
    against the ``T / C`` steps of the carry (each a PyTorch call over a whole slice)."""
    return max(1, math.isqrt(max(steps - 1, 0)) + 1)


def _groups(steps: int, block: int) -> list[tuple[int, int, int]]:
    """(start, count, size): ``count`` blocks of ``size`` steps from ``start``: the full blocks, then the rest."""
    full, rest = divmod(steps, block)
    parts = [(0, full, block)] if full else []
    if rest:
        parts.append((full * block, 1, rest))
    return parts


def _split(y: Tensor, start: int, count: int, size: int) -> tuple[Tensor, Tensor]:
    """k and p of ``count`` blocks of ``size`` steps from ``start``, viewed as (count, size, ..., H)."""
    view = y[start : start + count * size].unflatten(0, (count, size))
    return view.chunk(2, dim=-1)  # type: ignore[return-value]


def _forward(y: Tensor, h0: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """States ``h`` (T, ..., H) and the state at every block's start (blocks, ..., H)."""
    steps = y.shape[0]
    h = y.new_empty((*y.shape[:-1], y.shape[-1] // 2))
    decay = torch.empty_like(h)  # A_j = sum of log a over the block up to j, then exp(A_j)
    groups = _groups(steps, block)
    # Up-sweep, all blocks at once, step j of every block per iteration: log space, block start h = 0.
    for start, count, size in groups:
        k, p = _split(y, start, count, size)
        hv = h[start : start + count * size].unflatten(0, (count, size))
        av = decay[start : start + count * size].unflatten(0, (count, size))
        for j in range(size):
            log_z = F.logsigmoid(k[:, j])
            log_b = log_g(p[:, j]).add_(log_z)
            log_a = log_z.sub_(k[:, j])
            if j == 0:
                hv[:, 0] = log_b
                av[:, 0] = log_a
            else:
                torch.logaddexp(log_a.add(hv[:, j - 1]), log_b, out=hv[:, j])
                torch.add(av[:, j - 1], log_a, out=av[:, j])
    # Carry across blocks: h at a block's end = exp(l_last) + exp(A_last) * h at its start.
    starts = []
    state = h0
    for start, count, size in groups:
        last = start + size - 1
        ends_h = h[last : start + count * size : size].exp()
        ends_a = decay[last : start + count * size : size].exp()
        for i in range(count):
            starts.append(state)
            state = torch.addcmul(ends_h[i], ends_a[i], state)
    carry = torch.stack(starts)
    # Down-sweep: h_j = exp(l_j) + exp(A_j) * h_start.
    first = 0
    for start, count, size in groups:
        hv = h[start : start + count * size].unflatten(0, (count, size))
        av = decay[start : start + count * size].unflatten(0, (count, size))
        c = carry[first : first + count]
        for j in range(size):
            hv[:, j].exp_().addcmul_(av[:, j].exp_(), c)
        first += count
    return h, carry


def _backward(grad: Tensor, y: Tensor, h: Tensor, carry: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """dL/dy (T, ..., 2H) and dL/dh0 from dL/dh, for ``h = _forward(y, h0)`` and its block-start states."""
    steps = y.shape[0]
    grad_y = torch.empty_like(y)
    groups = _groups(steps, block)
    # Up-sweep (reverse time inside every block): the block-local adjoint at its first step, with no gradient
    # arriving from later blocks, and the product of a over the rest of the block; and a at the first step.
    local, through, a_first = [], [], []
    for start, count, size in groups:
        k, _ = _split(y, start, count, size)
        gv = grad[start : start + count * size].unflatten(0, (count, size))
        adj = gv[:, size - 1].clone()
        prod = torch.ones_like(adj)
        for j in range(size - 1, 0, -1):
            a = torch.sigmoid(k[:, j]).neg_().add_(1)
            adj = torch.addcmul(gv[:, j - 1], a, adj)
            prod.mul_(a)
        local.append(adj)
        through.append(prod)
        a_first.append(torch.sigmoid(k[:, 0]).neg_().add_(1))
    local_all, through_all, a_all = torch.cat(local), torch.cat(through), torch.cat(a_first)
    # Carry (reverse over blocks): what flows into a block's last step from the next block's first step.
    blocks = local_all.shape[0]
    inflow = torch.zeros_like(local_all)
    for i in range(blocks - 1, 0, -1):
        inflow[i - 1] = a_all[i] * torch.addcmul(local_all[i], through_all[i], inflow[i])
    grad_h0 = a_all[0] * torch.addcmul(local_all[0], through_all[0], inflow[0])
    # Down-sweep: the true adjoint g_j, then dk = g a (h_j - h_{j-1}), dp = g z g'(p).
    first = 0
    for start, count, size in groups:
        k, p = _split(y, start, count, size)
        gk, gp = _split(grad_y, start, count, size)
        gv = grad[start : start + count * size].unflatten(0, (count, size))
        hv = h[start : start + count * size].unflatten(0, (count, size))
        adj = gv[:, size - 1] + inflow[first : first + count]
        a_next = None
        for j in range(size - 1, -1, -1):
            if a_next is not None:
                adj = torch.addcmul(gv[:, j], a_next, adj)
            z = torch.sigmoid(k[:, j])
            a = torch.rsub(z, 1)
            previous = hv[:, j - 1] if j > 0 else carry[first : first + count]
            torch.mul(torch.sub(hv[:, j], previous).mul_(a), adj, out=gk[:, j])
            gz = z.mul_(adj)
            pj = p[:, j]
            torch.where(pj >= 0, gz, torch.ops.aten.sigmoid_backward(gz, torch.sigmoid(pj)), out=gp[:, j])
            a_next = a
        first += count
    return grad_y, grad_h0


def scan_kernel(y: Tensor) -> ModuleType | None:
    """The C++ scan (``csrc/mingru_scan.cpp``: the same blocks, reduce-then-scan, fused and vectorised) for
    CPU float32/float64 tensors, else None: then :func:`_forward` / :func:`_backward` in PyTorch operations."""
    if y.device.type != "cpu" or y.dtype not in (torch.float32, torch.float64):
        return None
    return native.load("mingru_scan")


class _MinGRUScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, y: Tensor, h0: Tensor, block: int) -> Tensor:  # type: ignore[override]
        kernel = scan_kernel(y)
        if kernel is None:
            h, carry = _forward(y.detach(), h0.detach(), block)
        else:  # lanes flattened to (T, N, 2H) for the kernel, then viewed back
            hidden = y.shape[-1] // 2
            lanes = y.detach().reshape(y.shape[0], -1, 2 * hidden)
            h, carry = kernel.forward(lanes, h0.detach().reshape(-1, hidden), block)
            h = h.view(*y.shape[:-1], hidden)
            carry = carry.view(carry.shape[0], *h0.shape)
        ctx.save_for_backward(y, h, carry)
        ctx.block, ctx.kernel = block, kernel  # type: ignore[attr-defined]
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        y, h, carry = ctx.saved_tensors  # type: ignore[attr-defined]
        kernel, block = ctx.kernel, ctx.block  # type: ignore[attr-defined]
        if kernel is None:
            grad_y, grad_h0 = _backward(grad, y, h, carry, block)
        else:
            steps, hidden = y.shape[0], h.shape[-1]
            grad_y, grad_h0 = kernel.backward(  # grad with any strides: the kernel reads it as it is
                grad.reshape(steps, -1, hidden), y.reshape(steps, -1, 2 * hidden), h.reshape(steps, -1, hidden),
                carry.reshape(carry.shape[0], -1, hidden), block,
            )
            grad_y, grad_h0 = grad_y.view(y.shape), grad_h0.view(h.shape[1:])
        return grad_y, grad_h0 if ctx.needs_input_grad[1] else None, None  # type: ignore[attr-defined]


def mingru_scan(y: Tensor, h0: Tensor | None = None, block_size: int | None = None) -> Tensor:
    """minGRU's states ``h_t = (1 - z_t) h_{t-1} + z_t g(p_t)``, ``z_t = sigmoid(k_t)``, for all t at once.

    ``y = [k | p]``: (T, ..., 2H) pre-activations, time on dim 0 (``F.linear(x, linear.weight, ...)`` with rows
    z|h~); ``h0``: (..., H) or None (zeros), any sign. Returns ``h``: (T, ..., H). The two-level log-space scan
    of the module docstring with blocks of ``block_size`` steps (default :func:`default_block_size`), and its
    hand-written backward (which never stores a (T, ..., H) temporary)."""
    if y.dim() < 1 or y.shape[-1] % 2:
        raise ValueError(f"mingru_scan: y must end in an even dimension 2H, got shape {tuple(y.shape)}")
    hidden_shape = (*y.shape[1:-1], y.shape[-1] // 2)
    if h0 is None:
        h0 = y.new_zeros(hidden_shape)
    elif tuple(h0.shape) != hidden_shape:
        raise ValueError(f"mingru_scan: h0 must have shape {hidden_shape}, got {tuple(h0.shape)}")
    if y.shape[0] == 0:
        return y.new_empty((0, *hidden_shape))
    block = default_block_size(y.shape[0]) if block_size is None else block_size
    if block < 1:
        raise ValueError(f"mingru_scan: block_size must be positive, got {block}")
    return _MinGRUScan.apply(y, h0, block)
