"""The row-sparse machinery shared by the class-centre optimizers (SparseSGD, SparseAdamW).

A subclass names its per-row state tensors (:meth:`RowSparseOptimizer._row_state`) and gives the
update of one block of rows (:meth:`RowSparseOptimizer._rule`); this base finds the rows a sparse
gradient names, gathers them and their state in chunks of bounded size, and scatters them back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import Optimizer

MAX_CHUNK_ELEMENTS = 1 << 24  # rows are updated in chunks of at most this many elements (64 MiB)


class RowSparseOptimizer(Optimizer):
    """An optimizer that updates only the rows of a parameter that its sparse gradient names.

    Rows absent from the (coalesced) gradient keep their values and their state, so a step costs
    O(rows used) rather than O(rows owned). A sparse gradient that names every row, and a dense
    gradient, get an in-place update on views, with no temporaries of the parameter's size.
    """

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
                self._begin_step(state, group)
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
        by chunk (:meth:`partialfc.PartialFC.fuse_update`), so the gradient is never stored; the
        chunks of one backward form one step, and :meth:`step` closes it.
        """
        group = self._group_of(p, "update_rows")
        state = self._state(p, group)
        self._begin_rows(p, state, group)
        if isinstance(rows, slice):
            self._update_slice(p, rows, values, state, group)
        elif rows.numel():
            self._update_rows(p, rows, values, state, group)

    def init_state(self, p: torch.Tensor) -> dict:
        """``p``'s state, created now if it has none (the buffers ``step`` would create), so that
        a checkpoint can be saved before the first step or loaded into."""
        return self._state(p, self._group_of(p, "init_state"))

    # ---------------------------------------------------------------- what subclasses define

    def _state(self, p: torch.Tensor, group: dict) -> dict:
        """``p``'s state, with its buffers created if new."""
        raise NotImplementedError

    def _row_state(self, state: dict) -> dict[str, torch.Tensor]:
        """The tensors of ``state`` that hold one row per row of the parameter."""
        raise NotImplementedError

    def _rule(
        self,
        param: torch.Tensor,
        grad: torch.Tensor,
        rows: dict[str, torch.Tensor],
        state: dict,
        group: dict,
    ) -> None:
        """Update one block of rows in place: ``param`` and the blocks ``rows`` of the per-row
        state (views, or gathered copies that are scattered back afterwards)."""
        raise NotImplementedError

    def _begin_step(self, state: dict, group: dict) -> None:
        """Called once per parameter and :meth:`step` that has a gradient, before any row."""

    def _begin_rows(self, p: torch.Tensor, state: dict, group: dict) -> None:
        """Called for each :meth:`update_rows` call, before its rows."""

    # ---------------------------------------------------------------- gather, update, scatter

    def _group_of(self, p: torch.Tensor, caller: str) -> dict:
        group = next((g for g in self.param_groups if any(q is p for q in g["params"])), None)
        if group is None:
            raise ValueError(f"{caller}: the tensor is not a parameter of this optimizer")
        return group

    def _update_rows(
        self, p: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, state: dict, group: dict
    ) -> None:
        """Gather, update and scatter back the listed rows, in chunks of bounded size."""
        per_row = self._row_state(state)
        chunk = max(1, MAX_CHUNK_ELEMENTS // max(1, values[0].numel()))
        for lo in range(0, rows.numel(), chunk):
            r = rows[lo : lo + chunk]
            param = p.index_select(0, r)
            blocks = {k: t.index_select(0, r) for k, t in per_row.items()}
            self._rule(param, values[lo : lo + chunk], blocks, state, group)
            p.index_copy_(0, r, param)
            for k, t in per_row.items():
                t.index_copy_(0, r, blocks[k])

    def _update_dense(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        """Update every row in place, on views of bounded size."""
        if p.dim() == 0:
            self._rule(p, grad, self._row_state(state), state, group)
            return
        chunk = max(1, MAX_CHUNK_ELEMENTS // max(1, p[0].numel()))
        for lo in range(0, p.shape[0], chunk):
            sl = slice(lo, lo + chunk)
            self._update_slice(p, sl, grad[sl], state, group)

    def _update_slice(
        self, p: torch.Tensor, sl: slice, grad: torch.Tensor, state: dict, group: dict
    ) -> None:
        """Update the rows ``sl`` of ``p`` (and their state) in place, on views."""
        blocks = {k: t[sl] for k, t in self._row_state(state).items()}
        self._rule(p[sl], grad, blocks, state, group)
