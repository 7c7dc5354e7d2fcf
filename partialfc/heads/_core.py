"""The sharded margin-softmax cross-entropy as one autograd function.

Legend: B = global batch, D = embedding width, C_r = rows of this rank's shard, N = rows used this
step (all C_r, or the sampled subset). One (B, N) buffer serves as logits, then probabilities, then
the logits' gradient, so the head holds a single B x N float tensor from forward to backward.

Target logits are not taken from the GEMM: each row's target logit comes from the margin, applied
to the row's embedding and class centre (B x D work) under a small autograd graph, so every margin
gets its exact gradient without a hand-written derivative. Its gradients are folded into dX and
into the dense (N, D) rows of dW before dW is handed back as a coalesced sparse COO gradient of
the full (C_r, D) shard: no dense C_r x D gradient is ever allocated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from partialfc.distributed import combine_softmax_stats
from partialfc.heads import _subcenters
from partialfc.margins import Margin, MarginBatch

NORM_EPS = 1e-12  # as F.normalize: centres with a smaller norm are divided by this instead
BLOCK_ELEMENTS = (
    1 << 24
)  # class rows are read in blocks of at most this many elements (64 MiB fp32)


class SparseGradMarks:
    """Values tensors of the sparse gradients the core produced in its last backward.

    Autograd stores a leaf's first sparse gradient as a shallow copy that drops the "coalesced"
    flag, and an optimizer would then sort and copy all N x D values again. The head's
    post-accumulate hook restores the flag when the stored gradient still holds exactly the values
    produced here (a single backward: sorted, unique rows); a sum of several backwards keeps
    ``is_coalesced() == False`` and is coalesced by the optimizer as it must be.
    """

    def __init__(self) -> None:
        self.data_ptrs: set[int] = set()

    def restore_flag(self, param: torch.Tensor) -> None:
        grad = param.grad
        ours = grad is not None and grad.is_sparse and grad._values().data_ptr() in self.data_ptrs
        if ours and not grad.is_coalesced():
            grad._coalesced_(True)


@dataclass(frozen=True)
class CoreOptions:
    """Per-head constants of :func:`margin_softmax_loss`."""

    margin: Margin
    filter_threshold: float | None  # zero non-target cosines above it (insightface's filter)
    gemm_dtype: torch.dtype | None  # bf16/fp16 under autocast, None: the inputs' dtype
    group: dist.ProcessGroup | None
    marks: SparseGradMarks | None = None  # records the sparse values produced by backward
    # The fused backward applies the optimizer to each chunk of dW rows instead of storing dW
    # (PartialFC.fuse_update): called with (rows: sorted tensor or slice, their dW values).
    row_update: Callable[[torch.Tensor | slice, torch.Tensor], None] | None = None
    sub_centers: int = 1  # K rows per class, class-major (partialfc.heads._subcenters)


def _rows(weight: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return weight if index is None else weight.index_select(0, index)


def _blocks(
    weight: torch.Tensor, index: torch.Tensor | None, num_rows: int, step: int | None = None
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(columns, rows)`` blocks of the rows taking part, ``step`` rows each.

    By default sampled rows are gathered in blocks of at most BLOCK_ELEMENTS, so no (N, D) copy of
    the shard ever exists; without sampling the whole shard is one block, a view, so each GEMM
    runs once over it. With ``step`` every block has that many rows (views of an unsampled shard).
    """
    if index is None and step is None:
        yield slice(0, num_rows), weight
        return
    if step is None:
        step = max(1, BLOCK_ELEMENTS // max(1, weight.shape[1]))
    for lo in range(0, num_rows, step):
        cols = slice(lo, min(lo + step, num_rows))
        yield cols, weight[cols] if index is None else weight.index_select(0, index[cols])


def _mm(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is None:
        return a @ b
    return a.to(dtype) @ b.to(dtype)  # no copy for an operand already in ``dtype``


def _mm_into(
    out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype | None
) -> None:
    """``out = a @ b``, written in place when the layout allows (no temporary, no copy)."""
    if (
        (dtype is None or dtype == out.dtype)
        and out.is_contiguous()
        and a.dtype == b.dtype == out.dtype
    ):
        torch.mm(a, b, out=out)
    else:
        out.copy_(_mm(a, b, dtype))


class _MarginSoftmaxLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,  # (B, D), as the GEMM sees it (normalised or not)
        weight: torch.Tensor,  # (C_r, D) leaf shard
        bias: torch.Tensor | None,  # (C_r,)
        norms: torch.Tensor | None,  # (B,) |x| of the raw embeddings, for margins that use it
        index: torch.Tensor | None,  # (N,) sorted local classes used; None: all C_r classes
        col: torch.Tensor,  # (B,) column in [0, N) of each row's class (junk where ~has)
        target_row: torch.Tensor,  # (B,) class in [0, C_r) of each row's label (junk where ~has)
        has: torch.Tensor,  # (B,) bool: this shard owns the row's class
        opts: CoreOptions,
        batch: MarginBatch,
    ) -> torch.Tensor:
        margin = opts.margin
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        batch_size = x.shape[0]
        k = opts.sub_centers
        rows = _subcenters.expand_rows(index, k)  # (N*K,) local rows of the classes used
        num_rows = weight.shape[0] if rows is None else rows.numel()  # N*K

        logits = x.new_empty((batch_size, num_rows), dtype=acc)  # (B, N): the one big buffer
        inv_norm = x.new_empty(num_rows, dtype=acc) if margin.normalize_weight else None
        xg = x if opts.gemm_dtype is None else x.to(opts.gemm_dtype)
        for cols, w in _blocks(weight, rows, num_rows):
            _mm_into(logits[:, cols], xg, w.t(), opts.gemm_dtype)
            if inv_norm is not None:
                w_norms = torch.linalg.vector_norm(w, dim=1).clamp_min(NORM_EPS)
                inv_norm[cols] = w_norms.reciprocal()
        del xg
        which = row_inv_norm = None  # sub-centres: the winning row of each (B, N) class column
        if k > 1:  # (B, N*K) -> (B, N): each class's closest sub-centre (x . w / |w|, max over K)
            row_inv_norm = inv_norm
            logits, which = _subcenters.reduce_max(logits.mul_(inv_norm), k)
            num_rows //= k
            inv_norm = torch.ones(num_rows, dtype=acc, device=x.device)  # already divided
            target_row, target_col = _subcenters.winning_rows(target_row, col, which, k)
        else:
            target_col = col
        # Each column's factor: s / |w_j| (normalised centres) or s; one pass applies it.
        col_scale = inv_norm * margin.scale if inv_norm is not None else None
        frozen = None  # (B, N) bool: entries whose logit does not depend on the GEMM (no gradient)
        if opts.filter_threshold is not None:  # cos > t  <=>  raw > t * |w_j|
            assert inv_norm is not None, "the filter needs normalised centres"
            frozen = logits > (opts.filter_threshold / inv_norm)
            logits.masked_fill_(frozen, 0.0)
        slope = None  # (B, N): d logit / d (s*cos) of reshaped non-target cosines
        if margin.cos_limit is not None or not margin.target_only:
            frozen, slope = _reshape_cosines(logits, inv_norm, frozen, margin, batch)
        elif col_scale is not None:
            logits.mul_(col_scale)
        elif margin.scale != 1.0:
            logits.mul_(margin.scale)
        if bias is not None:
            logits.add_(_rows(bias, index).to(acc), alpha=margin.scale)

        col2 = col.unsqueeze(1)  # (B, 1)
        x_leaf = w_leaf = n_leaf = target = None
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_(ctx.needs_input_grad[0])
            # Rows not owned here (~has) read some row of the shard; they are masked out below.
            # Even an empty sample runs the margin: its annealing counter advances on every rank.
            w_leaf = weight.index_select(0, target_row).detach()
            w_leaf.requires_grad_(ctx.needs_input_grad[1])
            if norms is not None:
                n_leaf = norms.detach().requires_grad_(ctx.needs_input_grad[3])
            target = margin(x_leaf, w_leaf, replace(batch, norms=n_leaf))  # (B,) or None
        if target is None:  # plain softmax: the GEMM's logit is the target logit
            target_local = (
                logits.gather(1, col2).squeeze(1) if num_rows else x.new_zeros(batch_size)
            )
        else:
            target_local = target.detach().to(acc)
            if num_rows:
                current = logits.gather(1, col2).squeeze(1)
                logits.scatter_(1, col2, torch.where(has, target_local, current).unsqueeze(1))
        target_local = torch.where(has, target_local, torch.zeros_like(target_local))

        if num_rows:
            row_max = logits.amax(1)
            logits.sub_(row_max.unsqueeze(1)).exp_()
            row_sumexp = logits.sum(1)
        else:  # an empty shard contributes exp(-inf) = 0 to every row
            row_max = torch.full((batch_size,), float("-inf"), dtype=acc, device=x.device)
            row_sumexp = torch.zeros(batch_size, dtype=acc, device=x.device)
        # One collective merges (max, sum-exp, target logit) of all shards.
        gmax, gsum, gtarget = combine_softmax_stats(row_max, row_sumexp, target_local, opts.group)
        loss = (gmax + gsum.log() - gtarget).mean()
        probs = logits.mul_((torch.exp(row_max - gmax) / gsum).unsqueeze(1))  # softmax, in place

        ctx.opts = opts
        ctx.graph = (x_leaf, w_leaf, n_leaf, target)
        ctx.gemm_shape = (batch_size, num_rows)
        saved = (x, weight, index, inv_norm, probs, col, has, frozen, slope)
        ctx.save_for_backward(*saved, which, row_inv_norm, target_col)
        ctx.has_bias = bias is not None
        ctx.consumed = False
        return loss.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        with torch.autocast(grad_loss.device.type, enabled=False):
            return _MarginSoftmaxLoss._backward(ctx, grad_loss)

    @staticmethod
    def _backward(ctx, grad_loss: torch.Tensor):
        if ctx.consumed:
            raise RuntimeError(
                "PartialFC's loss was back-propagated twice; its saved buffer is reused in place "
                "(retain_graph=True is not supported)"
            )
        ctx.consumed = True
        x, weight, index, inv_norm, probs, col, has, frozen, slope, which, row_inv_norm, tcol = (
            ctx.saved_tensors
        )
        opts = ctx.opts
        margin = opts.margin
        x_leaf, w_leaf, n_leaf, target = ctx.graph
        batch, num_rows = ctx.gemm_shape
        col2 = col.unsqueeze(1)

        g = (grad_loss / batch).to(probs.dtype)
        grad = probs.mul_(g)  # (B, N): d loss / d logit, in place over the probabilities
        grad_target = None
        if num_rows:
            p_target = grad.gather(1, col2).squeeze(1)  # g * p_target
            if target is None:  # the target logit is the GEMM's: d/dz_y = g*(p_y - 1)
                grad.scatter_add_(1, col2, torch.where(has, -g, 0.0).unsqueeze(1).to(grad.dtype))
            else:  # the target logit comes from the margin: its column carries no GEMM gradient
                grad_target = torch.where(has, p_target - g, torch.zeros_like(p_target))
                grad.scatter_(1, col2, torch.where(has, 0.0, p_target).unsqueeze(1))
        if frozen is not None:
            grad.masked_fill_(frozen, 0.0)
        if slope is not None:
            grad.mul_(slope)

        grad_b = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0) * margin.scale
        if inv_norm is not None:  # now d loss / d (x . w_j) with the norm held constant
            grad.mul_(inv_norm * margin.scale)
        elif margin.scale != 1.0:
            grad.mul_(margin.scale)
        rows = index
        if which is not None:  # sub-centres: each class column's gradient to its winning row
            k = opts.sub_centers
            grad = _subcenters.expand_grad(grad, which, k).mul_(row_inv_norm)
            inv_norm, rows, num_rows = row_inv_norm, _subcenters.expand_rows(index, k), num_rows * k

        grad_x = grad_w = None
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if want_x:
            grad_x = torch.zeros_like(x)  # (B, D)
        if want_w:
            grad_w = weight.new_empty((num_rows, weight.shape[1]))  # (N, D): the sparse values
        xg = x if opts.gemm_dtype is None else x.to(opts.gemm_dtype)
        for cols, w in _blocks(weight, rows, num_rows if (want_x or want_w) else 0):
            g_block = grad[:, cols]
            if want_x:
                grad_x += _mm(g_block, w, opts.gemm_dtype).to(x.dtype)
            if want_w:
                gw = grad_w[cols]  # rows of a contiguous (N, D) tensor: written in place
                _mm_into(gw, g_block.t(), xg, opts.gemm_dtype)
                if inv_norm is not None:
                    # w_j / |w_j| depends on |w_j|: dW_j -= (dW_j . w_j) / |w_j|^2 * w_j.
                    dots = torch.bmm(gw.unsqueeze(1), w.unsqueeze(2)).view(-1)  # (n,)
                    coef = (dots * inv_norm[cols].square()).to(w.dtype)
                    gw.addcmul_(w, coef.unsqueeze(1), value=-1.0)
        del xg
        del grad, probs

        *parts, grad_norms = target_grads((x_leaf, w_leaf, None, n_leaf), target, grad_target)
        grad_x, grad_weight, grad_bias = finish_backward(
            tuple(parts), (grad_x, grad_w, grad_b), tcol, rows, tuple(weight.shape), opts.marks
        )
        ctx.graph = None
        return grad_x, grad_weight, grad_bias, grad_norms, None, None, None, None, None, None


def target_grads(
    leaves: tuple[torch.Tensor | None, ...],
    target: torch.Tensor | None,
    grad_target: torch.Tensor | None,
) -> tuple[torch.Tensor | None, ...]:
    """``grad_target`` back-propagated through the small graph that made the target logits
    ``target`` from the ``leaves`` (x, the target rows of W, those of the bias, the norms).
    Returns one gradient per leaf, None for a leaf that is None or does not require grad."""
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    if target is None or grad_target is None or not wanted:
        return (None,) * len(leaves)
    # allow_unused: a margin may read a leaf without differentiating it (AdaFace's norms)
    parts = torch.autograd.grad(target, wanted, grad_target.to(target.dtype), allow_unused=True)
    by_id = dict(zip([id(t) for t in wanted], parts, strict=True))
    return tuple(by_id.get(id(t)) if t is not None else None for t in leaves)


def _sparse_outputs(
    grad_w: torch.Tensor | None,
    grad_b: torch.Tensor | None,
    index: torch.Tensor | None,
    shape: tuple[int, int],
    marks: SparseGradMarks | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The (N, D) and (N,) values of dW and db as sparse COO gradients of the shard of ``shape``
    (rows ``index``, or all), marked as the head's own (see :class:`SparseGradMarks`)."""
    rows = None
    if grad_w is not None or grad_b is not None:
        device = (grad_w if grad_w is not None else grad_b).device
        rows = _row_indices(index, shape[0], device)
    grad_weight = None if grad_w is None else _sparse_rows_grad(rows, grad_w, tuple(shape))
    grad_bias = None if grad_b is None else _sparse_rows_grad(rows, grad_b, (shape[0],))
    if marks is not None:
        marks.data_ptrs = {
            t._values().data_ptr() for t in (grad_weight, grad_bias) if t is not None
        }
    return grad_weight, grad_bias


def finish_backward(
    parts: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
    grads: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
    col: torch.Tensor,
    index: torch.Tensor | None,
    shape: tuple[int, int],
    marks: SparseGradMarks | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The common tail of both backwards: the target logits' gradients ``parts``
    (:func:`target_grads`; None where absent or already folded in) added to dX and, at ``col``,
    into the values of dW and db; then :func:`_sparse_outputs`. Returns (dX, dW, db); None where
    ``grads`` had None."""
    grad_x, grad_w, grad_b = grads
    part_x, part_w, part_b = parts
    if part_x is not None:  # x requires grad exactly when dX is wanted: grad_x is a tensor
        grad_x = grad_x + part_x
    for part, values in ((part_w, grad_w), (part_b, grad_b)):
        if part is not None and values is not None:
            values.index_add_(0, col, part.to(values.dtype))
    return (grad_x, *_sparse_outputs(grad_w, grad_b, index, shape, marks))


def _row_indices(index: torch.Tensor | None, num_rows: int, device: torch.device) -> torch.Tensor:
    return torch.arange(num_rows, device=device) if index is None else index


def _sparse_rows_grad(
    rows: torch.Tensor, values: torch.Tensor, size: tuple[int, ...]
) -> torch.Tensor:
    """A sparse COO gradient holding ``values`` at the sorted, unique rows ``rows``."""
    return torch.sparse_coo_tensor(
        rows.unsqueeze(0), values, size, is_coalesced=True, check_invariants=False
    )


def _reshape_cosines(
    logits: torch.Tensor,
    inv_norm: torch.Tensor | None,
    frozen: torch.Tensor | None,
    margin: Margin,
    batch: MarginBatch,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Raw logits (B, N) -> ``s * h(cos)`` in place, for margins that clamp (AdaFace) or reshape
    (CurricularFace) the non-target cosines. Returns the frozen mask (filtered or clamped:
    no gradient) and the slope ``h'(cos)`` (None where it is 1 everywhere)."""
    assert inv_norm is not None, "cosine reshaping needs normalised centres"
    logits.mul_(inv_norm)  # now cosines
    if margin.cos_limit is not None:
        limit = margin.cos_limit
        clamped = logits.abs() > limit
        logits.clamp_(-limit, limit)
        frozen = clamped if frozen is None else frozen | clamped
    slope = None if margin.target_only else margin.other_logits(logits, batch)
    logits.mul_(margin.scale)
    return frozen, slope


def margin_softmax_loss(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    index: torch.Tensor | None,
    col: torch.Tensor,
    target_row: torch.Tensor,
    has: torch.Tensor,
    opts: CoreOptions,
    batch: MarginBatch | None = None,
) -> torch.Tensor:
    """Mean over the global batch of ``-log softmax(target)`` across all shards of ``opts.group``.

    Args:
        x: (B, D) the global batch, normalised when the margin asks for it.
        weight: (C_r, D) this rank's class centres; receives a sparse COO gradient.
        bias: (C_r,) per-class bias or None; receives a sparse COO gradient.
        index: (N,) sorted local classes taking part, or None for every class (with
            ``opts.sub_centers`` K > 1 each class is rows ``c*K .. c*K + K-1`` of ``weight``).
        col: (B,) position in ``[0, N)`` of each row's class among the classes taking part; any
            value in range where ``has`` is False.
        target_row: (B,) local class in ``[0, C_r)`` of each row's label; any class where
            ``has`` is False.
        has: (B,) bool, whether this shard owns the row's class.
        opts: the margin, the filter, the GEMM dtype and the process group.
        batch: what the margin knows of the global batch; its ``norms`` (B,), differentiable,
            receive the target logits' gradient.
    """
    batch = batch or MarginBatch()
    return _MarginSoftmaxLoss.apply(
        x, weight, bias, batch.norms, index, col, target_row, has, opts, replace(batch, norms=None)
    )
