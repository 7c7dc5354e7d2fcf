"""SGD with momentum and weight decay that touches only the rows a sparse gradient names."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer

MAX_CHUNK_ELEMENTS = (
    1 << 24
)  # rows are updated in chunks of at most this many elements (64 MiB fp32)


class SparseSGD(Optimizer):
    """SGD for class centres whose gradients are sparse COO row sets.

    For every row present in the (coalesced) gradient, and only for those rows::

        g   = grad_row + weight_decay * param_row
        buf = momentum * buf + (1 - dampening) * g        (buf = g on the row's first update)
        param_row -= lr * (g + momentum * buf if nesterov else buf)

    Rows absent from the gradient keep their values and their momentum: weight decay and momentum
    are applied lazily, at the steps where a row is used, so a step costs O(rows used) rather than
    O(rows owned). Several backward calls before ``step`` (gradient accumulation) add up their
    sparse gradients; the sum is coalesced here. A sparse gradient that names every row, and a
    dense gradient, get an in-place dense update with no temporaries of the parameter's size.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        momentum: momentum factor.
        dampening: dampening of the momentum.
        weight_decay: L2 penalty, applied to the rows used.
        nesterov: Nesterov momentum.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 0.1,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening == 0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p, group)
                grad = p.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                    if rows.numel() == 0:
                        continue
                    if rows.numel() < p.shape[0]:
                        self._update_rows(p, rows, values, state, group)
                        continue
                    grad = values  # every row present: coalesced rows are 0..n-1 in order
                self._update_dense(p, grad, state, group)
        return loss

    @torch.no_grad()
    def update_rows(
        self, p: torch.Tensor, rows: torch.Tensor | slice, values: torch.Tensor
    ) -> None:
        """Apply this optimizer's step, now, to the rows ``rows`` of ``p`` whose gradient is
        ``values`` (one row of values per row named): exactly what :meth:`step` does with a
        sparse gradient holding those rows. ``rows`` is a sorted tensor of unique row numbers, or
        a slice (updated in place on views). The fused head calls this from its backward, chunk
        by chunk (:meth:`partialfc.PartialFC.fuse_update`), so the gradient is never stored.
        """
        group = self._group_of(p, "update_rows")
        state = self._state(p, group)
        if isinstance(rows, slice):
            _update_slice(p, rows, values, state, group)
        elif rows.numel():
            self._update_rows(p, rows, values, state, group)

    def init_state(self, p: torch.Tensor) -> dict:
        """``p``'s state, created now if it has none (the buffers ``step`` would create), so that
        a checkpoint can be saved before the first step or loaded into."""
        return self._state(p, self._group_of(p, "init_state"))

    def _group_of(self, p: torch.Tensor, caller: str) -> dict:
        group = next((g for g in self.param_groups if any(q is p for q in g["params"])), None)
        if group is None:
            raise ValueError(f"{caller}: the tensor is not a parameter of this optimizer")
        return group

    def _state(self, p: torch.Tensor, group: dict) -> dict:
        """``p``'s state, with its momentum buffer (and first-update flags) created if new."""
        state = self.state[p]
        if group["momentum"] != 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["dampening"] != 0:
                # With zeros, buf = m*0 + (1-d)*g would differ from torch.optim.SGD's
                # first-update rule buf = g; a per-row flag keeps the rules identical.
                rows = p.shape[0] if p.dim() else 1
                state["row_seen"] = torch.zeros(rows, dtype=torch.bool, device=p.device)
        return state

    def _update_rows(
        self, p: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, state: dict, group: dict
    ) -> None:
        """Gather, update and scatter back the listed rows, in chunks of bounded size."""
        buf_all, seen_all = state.get("momentum_buffer"), state.get("row_seen")
        chunk = max(1, MAX_CHUNK_ELEMENTS // max(1, values[0].numel()))
        for lo in range(0, rows.numel(), chunk):
            r = rows[lo : lo + chunk]
            param = p.index_select(0, r)
            buf = buf_all.index_select(0, r) if buf_all is not None else None
            seen = seen_all.index_select(0, r) if seen_all is not None else None
            _sgd_rule(param, values[lo : lo + chunk], buf, seen, group)
            p.index_copy_(0, r, param)
            if buf_all is not None:
                buf_all.index_copy_(0, r, buf)
            if seen_all is not None:
                seen_all.index_fill_(0, r, True)

    def _update_dense(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        """Update every row in place, on views of bounded size."""
        buf_all, seen_all = state.get("momentum_buffer"), state.get("row_seen")
        if p.dim() == 0:
            _sgd_rule(p, grad, buf_all, seen_all, group)
            if seen_all is not None:
                seen_all.fill_(True)
            return
        chunk = max(1, MAX_CHUNK_ELEMENTS // max(1, p[0].numel()))
        for lo in range(0, p.shape[0], chunk):
            sl = slice(lo, lo + chunk)
            _update_slice(p, sl, grad[sl], state, group)


def _update_slice(p: torch.Tensor, sl: slice, grad: torch.Tensor, state: dict, group: dict) -> None:
    """Update the rows ``sl`` of ``p`` (and their state) in place, on views."""
    buf_all, seen_all = state.get("momentum_buffer"), state.get("row_seen")
    buf = buf_all[sl] if buf_all is not None else None
    seen = seen_all[sl] if seen_all is not None else None
    _sgd_rule(p[sl], grad, buf, seen, group)
    if seen is not None:
        seen.fill_(True)


def _sgd_rule(
    param: torch.Tensor,
    grad: torch.Tensor,
    buf: torch.Tensor | None,
    seen: torch.Tensor | None,
    group: dict,
) -> None:
    """torch.optim.SGD's update of one block of rows, in place on ``param`` and ``buf``."""
    lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
    if momentum != 0 and seen is None and not group["nesterov"]:
        # The common case, with no temporary: buf = m*buf + (1-d)*(grad + wd*param).
        assert buf is not None
        damp = 1.0 - group["dampening"]
        buf.mul_(momentum).add_(grad, alpha=damp)
        if wd != 0:
            buf.add_(param, alpha=wd * damp)
        param.add_(buf, alpha=-lr)
        return
    g = grad if wd == 0 else grad.add(param, alpha=wd)
    if momentum != 0:
        assert buf is not None
        buf.mul_(momentum).add_(g, alpha=1.0 - group["dampening"])
        if seen is not None:  # rows updated for the first time take buf = g
            fresh = ~seen.view(-1, *([1] * (g.dim() - 1)))
            buf.copy_(torch.where(fresh, g, buf))
        g = g.add(buf, alpha=momentum) if group["nesterov"] else buf
    param.add_(g, alpha=-lr)
