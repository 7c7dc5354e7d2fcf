"""SGD with momentum and weight decay that touches only the rows a sparse gradient names."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from partialfc.optim._rows import RowSparseOptimizer


class SparseSGD(RowSparseOptimizer):
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

    def _row_state(self, state: dict) -> dict[str, torch.Tensor]:
        return {k: state[k] for k in ("momentum_buffer", "row_seen") if k in state}

    def _rule(
        self,
        param: torch.Tensor,
        grad: torch.Tensor,
        rows: dict[str, torch.Tensor],
        state: dict,
        group: dict,
    ) -> None:
        seen = rows.get("row_seen")
        _sgd_rule(param, grad, rows.get("momentum_buffer"), seen, group)
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
