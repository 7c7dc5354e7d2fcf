"""AdamW that touches only the rows a sparse gradient names, and their two moments."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from partialfc.optim._rows import RowSparseOptimizer


class SparseAdamW(RowSparseOptimizer):
    """AdamW (decoupled weight decay) for class centres whose gradients are sparse COO row sets.

    At step ``t`` of the parameter (the number of :meth:`step` calls that found it a gradient, as
    ``torch.optim.SparseAdam`` counts), for every row present in the (coalesced) gradient, and
    only for those rows::

        param_row *= 1 - lr * weight_decay
        m_row = beta1 * m_row + (1 - beta1) * grad_row
        v_row = beta2 * v_row + (1 - beta2) * grad_row**2
        param_row -= lr / (1 - beta1**t) * m_row / (sqrt(v_row / (1 - beta2**t)) + eps)

    Rows absent from the gradient keep their values and both moments: a row's moments decay, and
    its weight decays, only at the steps where it is used. When every row is used at every step
    this is exactly ``torch.optim.AdamW``. Several backward calls before ``step`` (gradient
    accumulation) add up their sparse gradients; the sum is coalesced here.

    State per parameter: ``exp_avg`` and ``exp_avg_sq`` (the parameter's shape, row-sharded in
    checkpoints like SparseSGD's momentum) and ``step`` (a scalar tensor, the same on every rank).

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        betas: decay rates of the first and second moments.
        eps: added to the denominator.
        weight_decay: decoupled weight decay, applied to the rows used.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        # Parameters whose step this backward's fused updates have already counted (update_rows
        # is called once per chunk; the chunks of one backward are one step, closed by step()).
        self._counted: set[int] = set()

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = super().step(closure)
        self._counted.clear()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        # A new step begins (also where the last one was skipped without step()).
        self._counted.clear()
        super().zero_grad(set_to_none)

    def _state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        if "exp_avg" not in state:
            # A float64 scalar like torch.optim's own (a float counter is exact far past 2**24).
            state["step"] = torch.zeros((), dtype=torch.float64)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _row_state(self, state: dict) -> dict[str, torch.Tensor]:
        return {"exp_avg": state["exp_avg"], "exp_avg_sq": state["exp_avg_sq"]}

    def _begin_step(self, state: dict, group: dict) -> None:
        state["step"] += 1

    def _begin_rows(self, p: torch.Tensor, state: dict, group: dict) -> None:
        if id(p) not in self._counted:
            self._counted.add(id(p))
            state["step"] += 1

    def _rule(
        self,
        param: torch.Tensor,
        grad: torch.Tensor,
        rows: dict[str, torch.Tensor],
        state: dict,
        group: dict,
    ) -> None:
        """torch.optim.AdamW's update of one block of rows (its single-tensor path, no amsgrad)."""
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        t = float(state["step"])
        exp_avg, exp_avg_sq = rows["exp_avg"], rows["exp_avg_sq"]
        if wd != 0:
            param.mul_(1.0 - lr * wd)
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        step_size = lr / (1.0 - beta1**t)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2**t)).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
