"""The margin-softmax loss without a B x N logits matrix: Triton kernels for the head.

Same contract and semantics as :mod:`partialfc.heads._core` (the reference path). What changes
is where the logits live: nowhere. Legend as there: B = global batch, D = embedding width, N =
rows taking part this step (the shard, or its sampled rows in ``index``).

* Forward: one pass computes the inverse norms of the N centres taking part; then each program
  of the stats kernel takes a block of rows and a contiguous split of the class tiles, computes
  each ``(BLOCK_M, BLOCK_N)`` logit tile with a float32-accumulated GEMM, and folds it into a
  running row max and sum of exponentials. Out come per-split ``(max, sum-exp)`` pairs.
  The target column is left out: every target logit comes from the margin, applied per row in
  PyTorch under a small autograd graph, exactly as the reference does, and is folded in after.
* The ranks combine ``(max, sum-exp, target)`` with one collective, as the reference does.
* Backward, in chunks of class rows: a kernel recomputes each logit tile from the saved row
  log-sum-exp and writes the chunk's ``d loss / d (x . w_j)`` (B x chunk, in the GEMM dtype),
  with per-row-block column sums for the normalisation and bias terms; two cuBLAS GEMMs then add
  the chunk's share to dX (split-K over the chunks, in float32) and write its rows of dW straight
  into the values of the sparse gradient. The normalisation term of ``dW_j`` needs
  ``dW_j . w_j``, which equals ``sum_i G_ij * (x_i . w_j)``: the kernel has both factors in
  registers. The logits are computed twice in all (forward, backward), never stored; at most one
  chunk of their gradient exists at a time.
* Optionally (``PartialFC.fuse_update``) dW is not stored either: each chunk's rows go through
  the optimizer's row update (SparseSGD, SparseAdamW) as soon as they are computed, so no (N, D)
  array exists in the step.

The GEMM runs in the embeddings' dtype (bf16/fp16 under autocast, float32 otherwise, with TF32
only when ``torch.backends.cuda.matmul.allow_tf32`` allows it); the centres stay float32 in
memory and are cast tile by tile; scale, margin, exp and every statistic are float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch

from partialfc.distributed import combine_softmax_stats
from partialfc.heads._core import (
    NORM_EPS,
    CoreOptions,
    _blocks,
    _mm,
    _mm_into,
    finish_backward,
    target_grads,
)
from partialfc.margins import MarginBatch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is missing
    triton = None
    tl = None

FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_available() -> bool:
    """Whether the Triton kernels can be imported."""
    return triton is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return triton is not None and bool(triton.knobs.runtime.interpret)


def check_fused_device(device: torch.device) -> None:
    """Raise a clear error where the kernels cannot run."""
    if triton is None:
        raise RuntimeError(
            "PartialFC(fused=True) needs Triton: pip install 'partialfc[triton]' (on a CUDA "
            "machine torch usually brings it)"
        )
    if device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"PartialFC(fused=True) runs on CUDA tensors (or on CPU under Triton's interpreter, "
            f"TRITON_INTERPRET=1); got tensors on {device}. Use fused='auto' to fall back to the "
            "reference path"
        )


# Autotuning candidates on a GPU, tuned per (B, D): (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages).
# BLOCK_M and BLOCK_N tile the batch and the class rows, BLOCK_K is the logit GEMM's reduction chunk.
STATS_CONFIGS = [(128, 128, 64, 8, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 3), (64, 64, 64, 4, 4)]
GRAD_CONFIGS = [(128, 128, 64, 8, 3), (128, 64, 64, 4, 3), (64, 128, 64, 4, 3), (64, 64, 64, 4, 4)]
MAX_SPLITS = 64  # class-tile splits of the forward kernel (its partial results)
CHUNK_ELEMENTS = 1 << 24  # backward: at most this many elements of the logits' gradient at once
INTERPRETER_CHUNK = 32  # rows per backward chunk under the interpreter: small tests span several


def _num_splits(batch: int, device: torch.device, per_sm: int = 4) -> int:
    """Splits of the class tiles so that (row blocks of 64) x splits programs fill the GPU a few
    times over; the interpreter takes two, so that tests cover the folding of splits."""
    if device.type != "cuda":
        return 2
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(MAX_SPLITS, math.ceil(per_sm * sms / math.ceil(batch / 64))))


def _chunk_rows(batch: int, num_rows: int) -> int:
    """Class rows per backward chunk: (B, chunk) gradient elements at most CHUNK_ELEMENTS, a
    multiple of 256 (whole tiles) and no more than the rows taking part."""
    if interpreting():
        return max(1, min(INTERPRETER_CHUNK, num_rows))
    rows = max(256, CHUNK_ELEMENTS // max(1, batch) // 256 * 256)
    return max(1, min(rows, num_rows))


def _configs(shapes: list[tuple[int, ...]], names: tuple[str, ...]) -> list:
    """Autotuning candidates: (block sizes..., warps, stages) each; under the interpreter one small
    configuration (16 everywhere, so that small tests still cross tile edges)."""
    if interpreting():
        return [triton.Config(dict.fromkeys(names, 16), num_warps=1, num_stages=1)]
    return [
        triton.Config(dict(zip(names, shape[:-2], strict=True)), num_warps=shape[-2],
                      num_stages=shape[-1])
        for shape in shapes
    ]  # fmt: skip


def _min_block_m() -> int:
    """The smallest BLOCK_M the gradient kernel may run with: rows of its column-sum partials."""
    return 16 if interpreting() else min(c[0] for c in GRAD_CONFIGS)


if triton is not None:
    _EPS: tl.constexpr = tl.constexpr(NORM_EPS)

    @triton.jit
    def _round_bf16(v):
        """float32 -> nearest bf16 (ties to even), kept in float32."""
        u = v.to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return u.to(tl.float32, bitcast=True)

    @triton.jit
    def _mma(a, b, acc, DTYPE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """``acc + a @ b`` with both operands in DTYPE, accumulated in float32.

        UPCAST (bf16 under Triton's interpreter, which multiplies bf16 wrongly and truncates when
        it converts to bf16): the operands are rounded to bf16 as a GPU does, then multiplied in
        float32, which holds every product of two bf16 values exactly.
        """
        if UPCAST:
            a32 = _round_bf16(a.to(tl.float32))
            b32 = _round_bf16(b.to(tl.float32))
            return tl.dot(a32, b32, acc, input_precision="ieee")
        return tl.dot(a.to(DTYPE), b.to(DTYPE), acc, input_precision=PRECISION)

    @triton.jit
    def _split_range(N, SPLITS, split, BLOCK_N: tl.constexpr):
        """Class tiles [first, last) of one split (empty for the last splits of a small N)."""
        tiles = tl.cdiv(N, BLOCK_N)
        per = tl.cdiv(tiles, SPLITS)
        first = split * per
        return first, tl.minimum(first + per, tiles)

    @triton.jit
    def _centre_rows(idx_ptr, cols, col_ok, USE_INDEX: tl.constexpr):
        """Row of the shard behind each column (int64: shards past 2**31 elements)."""
        if USE_INDEX:
            return tl.load(idx_ptr + cols, mask=col_ok, other=0).to(tl.int64)
        return cols.to(tl.int64)

    @triton.jit
    def _inv_norm_kernel(
        w_ptr, idx_ptr, inv_ptr, N, D, stride_w,
        USE_INDEX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """``1 / max(|w_j|, eps)`` of the rows taking part, once per step (not once per tile)."""
        cols = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        col_ok = cols < N
        wrow = _centre_rows(idx_ptr, cols, col_ok, USE_INDEX)
        sq = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            w = tl.load(
                w_ptr + wrow[:, None] * stride_w + kk[None, :],
                mask=col_ok[:, None] & (kk < D)[None, :],
                other=0.0,
            ).to(tl.float32)
            sq += tl.sum(w * w, axis=1)
        tl.store(inv_ptr + cols, 1.0 / tl.maximum(tl.sqrt(sq), _EPS), mask=col_ok)

    @triton.jit
    def _inv_norms(inv_ptr, cols, col_ok, NORMALIZE_W: tl.constexpr, BLOCK_N: tl.constexpr):
        if NORMALIZE_W:
            return tl.load(inv_ptr + cols, mask=col_ok, other=0.0)
        return tl.full((BLOCK_N,), 1.0, tl.float32)

    @triton.jit
    def _logit_tile(
        x_ptr, w_ptr, idx_ptr, rows, row_ok, cols, col_ok, D, stride_x, stride_w,
        USE_INDEX: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        """``x[rows] . w[cols]`` as a float32 (BLOCK_M, BLOCK_N) tile, and the centre row of each
        column."""
        wrow = _centre_rows(idx_ptr, cols, col_ok, USE_INDEX)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            k_ok = kk < D
            xk = tl.load(
                x_ptr + rows[:, None] * stride_x + kk[None, :],
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            wk = tl.load(
                w_ptr + wrow[:, None] * stride_w + kk[None, :],
                mask=col_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            acc = _mma(xk, tl.trans(wk), acc, xk.dtype, PRECISION, UPCAST)
        return acc, wrow

    @triton.jit
    def _scaled_logits(
        raw, inv, bias_ptr, wrow, col_ok, scale, threshold, limit, NORMALIZE_W: tl.constexpr,
        HAS_BIAS: tl.constexpr, FILTER: tl.constexpr, CLAMP: tl.constexpr,
    ):  # fmt: skip
        """Non-target logits of a raw tile, each column's d logit / d raw, and the mask of entries
        without gradient (filtered, or clamped to ``±limit`` as AdaFace clamps cosines)."""
        if NORMALIZE_W:  # noqa: SIM108 - Triton code: a constexpr branch
            col_scale = inv * scale
        else:
            col_scale = inv * 0.0 + scale
        z = raw * col_scale[None, :]
        if FILTER:
            filtered = raw * inv[None, :] > threshold
            z = tl.where(filtered, 0.0, z)
        else:
            filtered = raw != raw  # all False (raw is finite)
        if CLAMP:
            cos = raw * inv[None, :]
            clamped = ((cos > limit) | (cos < -limit)) & (~filtered)
            z = tl.where(clamped, tl.where(cos > 0, limit, -limit) * scale, z)
            filtered = filtered | clamped
        if HAS_BIAS:
            b = tl.load(bias_ptr + wrow, mask=col_ok, other=0.0).to(tl.float32)
            z = z + b[None, :] * scale
        return z, col_scale, filtered

    @triton.autotune(
        configs=_configs(STATS_CONFIGS, ("BLOCK_M", "BLOCK_N", "BLOCK_K")),
        key=["B", "D"],
    )
    @triton.jit
    def _stats_kernel(
        x_ptr, w_ptr, idx_ptr, bias_ptr, tcol_ptr, inv_ptr, max_ptr, sum_ptr,
        B, N, D, stride_x, stride_w, SPLITS, scale, threshold, limit,
        USE_INDEX: tl.constexpr, NORMALIZE_W: tl.constexpr, HAS_BIAS: tl.constexpr,
        FILTER: tl.constexpr, CLAMP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        split = tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < B
        tcol = tl.load(tcol_ptr + rows, mask=row_ok, other=-1)  # -1: target not in this shard
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        s_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        first, last = _split_range(N, SPLITS, split, BLOCK_N)
        for tile in range(first, last):
            cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            raw, wrow = _logit_tile(
                x_ptr, w_ptr, idx_ptr, rows, row_ok, cols, col_ok, D, stride_x, stride_w,
                USE_INDEX, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST,
            )  # fmt: skip
            inv = _inv_norms(inv_ptr, cols, col_ok, NORMALIZE_W, BLOCK_N)
            z, _, _ = _scaled_logits(
                raw, inv, bias_ptr, wrow, col_ok, scale, threshold, limit, NORMALIZE_W, HAS_BIAS,
                FILTER, CLAMP,
            )  # fmt: skip
            skip = (cols[None, :] == tcol[:, None]) | (~col_ok[None, :])
            z = tl.where(skip, float("-inf"), z)
            m_new = tl.maximum(m_i, tl.max(z, axis=1))
            base = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing yet
            s_i = s_i * tl.exp(m_i - base) + tl.sum(tl.exp(z - base[:, None]), axis=1)
            m_i = m_new
        tl.store(max_ptr + split * B + rows, m_i, mask=row_ok)
        tl.store(sum_ptr + split * B + rows, s_i, mask=row_ok)

    @triton.jit
    def _grad_tile(
        x_ptr, w_ptr, idx_ptr, bias_ptr, inv_ptr, tcol_ptr, lse_ptr, rows, row_ok, cols, col_ok,
        D, stride_x, stride_w, scale, threshold, limit, g_ptr,
        USE_INDEX: tl.constexpr, NORMALIZE_W: tl.constexpr, HAS_BIAS: tl.constexpr,
        FILTER: tl.constexpr, CLAMP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        """Recompute a tile; return d loss / d logit (G), d loss / d raw (G * col_scale), the raw
        tile and the centre rows. Target, filtered and out-of-range entries get zero."""
        raw, wrow = _logit_tile(
            x_ptr, w_ptr, idx_ptr, rows, row_ok, cols, col_ok, D, stride_x, stride_w,
            USE_INDEX, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST,
        )  # fmt: skip
        inv = _inv_norms(inv_ptr, cols, col_ok, NORMALIZE_W, BLOCK_N)
        z, col_scale, filtered = _scaled_logits(
            raw, inv, bias_ptr, wrow, col_ok, scale, threshold, limit, NORMALIZE_W, HAS_BIAS,
            FILTER, CLAMP,
        )  # fmt: skip
        tcol = tl.load(tcol_ptr + rows, mask=row_ok, other=-1)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=float("inf"))
        g = tl.load(g_ptr)  # d loss / d (per-row loss): grad_loss / B, kept on the device
        dead = (cols[None, :] == tcol[:, None]) | filtered
        dead = dead | (~col_ok[None, :]) | (~row_ok[:, None])
        grad = tl.where(dead, 0.0, g * tl.exp(z - lse[:, None]))
        return grad, grad * col_scale[None, :], raw, wrow

    @triton.autotune(
        configs=_configs(GRAD_CONFIGS, ("BLOCK_M", "BLOCK_N", "BLOCK_K")),
        key=["B", "D"],
        reset_to_zero=["dots_ptr", "dbias_ptr"],  # rows of a smaller BLOCK_M's trial run
    )
    @triton.jit
    def _grad_chunk_kernel(
        x_ptr, w_ptr, idx_ptr, bias_ptr, inv_ptr, tcol_ptr, lse_ptr, out_ptr, dots_ptr, dbias_ptr,
        B, N, D, stride_x, stride_w, first, width, stride_out, scale, threshold, limit, g_ptr,
        USE_INDEX: tl.constexpr, NORMALIZE_W: tl.constexpr, HAS_BIAS: tl.constexpr,
        FILTER: tl.constexpr, CLAMP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        """One tile of a chunk of ``width`` classes from column ``first``: d loss / d raw logit
        into ``out[rows, cols - first]`` (the GEMM dtype), and this row block's column sums of
        ``G_raw * raw`` (``dots``, the norm term) and of ``G`` (``dbias``), row ``pid_m``."""
        pid_m = tl.program_id(0)
        local = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < B
        col_ok = local < width
        cols = first + local
        grad, graw, raw, _ = _grad_tile(
            x_ptr, w_ptr, idx_ptr, bias_ptr, inv_ptr, tcol_ptr, lse_ptr, rows, row_ok, cols,
            col_ok, D, stride_x, stride_w, scale, threshold, limit, g_ptr, USE_INDEX, NORMALIZE_W,
            HAS_BIAS, FILTER, CLAMP, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST,
        )  # fmt: skip
        stored = graw
        if UPCAST:  # the interpreter's own float32 -> bf16 cast truncates
            stored = _round_bf16(graw)
        tl.store(
            out_ptr + rows.to(tl.int64)[:, None] * stride_out + local[None, :],
            stored.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & col_ok[None, :],
        )
        if NORMALIZE_W:
            tl.store(dots_ptr + pid_m * stride_out + local, tl.sum(graw * raw, axis=0), mask=col_ok)
        if HAS_BIAS:
            tl.store(dbias_ptr + pid_m * stride_out + local, tl.sum(grad, axis=0), mask=col_ok)


def _upcast(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and interpreting()


def _precision(dtype: torch.dtype) -> str:
    if dtype != torch.float32:
        return "tf32"  # ignored for 16-bit inputs
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


class _FusedMarginSoftmaxLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,  # (B, D) as the GEMM sees it
        weight: torch.Tensor,  # (C_r, D)
        bias: torch.Tensor | None,
        norms: torch.Tensor | None,  # (B,) |x| of the raw embeddings, for margins that use it
        index: torch.Tensor | None,
        col: torch.Tensor,
        target_row: torch.Tensor,
        has: torch.Tensor,
        opts: CoreOptions,
        margin_batch: MarginBatch,
    ) -> torch.Tensor:
        margin = opts.margin
        device = x.device
        batch, dim = x.shape
        num_rows = weight.shape[0] if index is None else index.numel()
        xg = (x if opts.gemm_dtype is None else x.to(opts.gemm_dtype)).contiguous()
        weight_c = weight.contiguous()
        splits = _num_splits(batch, device)
        tcol = torch.where(has, col, -1).contiguous()
        f32 = torch.float32
        inv_norm = torch.ones(num_rows, dtype=f32, device=device)
        part_max = torch.empty((splits, batch), dtype=f32, device=device)
        part_sum = torch.empty((splits, batch), dtype=f32, device=device)
        index_c, bias_c = _optional_pointers(index, bias, tcol, weight_c)
        flags = _flags(bias, index, opts)
        if opts.margin.normalize_weight:
            block_r = 16 if interpreting() else 64
            _inv_norm_kernel[(triton.cdiv(num_rows, block_r),)](
                weight_c, index_c, inv_norm, num_rows, dim, weight_c.stride(0),
                USE_INDEX=index is not None, BLOCK_R=block_r, BLOCK_K=block_r,
            )  # fmt: skip
        _stats_kernel[lambda meta: (triton.cdiv(batch, meta["BLOCK_M"]), splits)](
            xg, weight_c, index_c, bias_c, tcol, inv_norm, part_max, part_sum,
            batch, num_rows, dim, xg.stride(0), weight_c.stride(0), splits,
            float(margin.scale), float(opts.filter_threshold or 0.0), float(margin.cos_limit or 0.0),
            **flags,
            PRECISION=_precision(xg.dtype), UPCAST=_upcast(xg.dtype),
        )  # fmt: skip

        leaves, target = _target_graph(
            ctx, (x, weight, bias, norms), target_row, margin, margin_batch
        )
        t_local = torch.where(has, target.detach().to(f32), 0.0)
        # Fold the splits, then this shard's target logit, into one (max, sum-exp) per row.
        row_max = part_max.amax(0)
        base = torch.where(torch.isinf(row_max), 0.0, row_max)
        row_sum = (part_sum * torch.exp(part_max - base)).sum(0)
        t_in = torch.where(has, t_local, float("-inf"))
        both = torch.maximum(row_max, t_in)
        base2 = torch.where(torch.isinf(both), 0.0, both)
        row_sum = row_sum * torch.exp(row_max - base2) + torch.exp(t_in - base2)
        gmax, gsum, gtarget = combine_softmax_stats(both, row_sum, t_local, opts.group)
        lse = gmax + gsum.log()
        loss = (lse - gtarget).mean()

        ctx.opts, ctx.splits = opts, splits
        ctx.graph = (leaves, target)
        ctx.save_for_backward(xg, weight_c, bias, index, inv_norm, lse, tcol, col, has, t_local)
        ctx.x_dtype = x.dtype
        ctx.loss = loss.detach()  # a fused optimizer update is skipped when it is not finite
        ctx.consumed = False
        return loss.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        with torch.autocast(grad_loss.device.type, enabled=False):  # the dtypes are explicit
            return _FusedMarginSoftmaxLoss._backward(ctx, grad_loss)

    @staticmethod
    def _backward(ctx, grad_loss: torch.Tensor):
        if ctx.consumed:
            raise RuntimeError("PartialFC's loss was back-propagated twice (retain_graph=True)")
        ctx.consumed = True
        xg, weight, bias, index, inv_norm, lse, tcol, col, has, t_local = ctx.saved_tensors
        opts = ctx.opts
        leaves, target = ctx.graph
        batch, dim = xg.shape
        num_rows = weight.shape[0] if index is None else index.numel()
        device = xg.device
        f32 = torch.float32
        g = (grad_loss.to(f32) / batch).reshape(1)  # on the device: no host sync
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        update = opts.row_update if want_w else None
        if update is not None:
            # The trainer skips a step whose loss is not finite; so does the in-place update. The
            # one host sync of this mode (the trainer syncs on the loss each step anyway).
            if not bool((torch.isfinite(ctx.loss) & torch.isfinite(g)).all()):
                update = None
            want_w = False  # no dW stored: each chunk's rows are updated in place instead
        grad_x = torch.zeros((batch, dim), dtype=f32, device=device) if want_x else None
        grad_w = weight.new_empty((num_rows, dim)) if want_w else None
        grad_b = bias.new_zeros(num_rows) if want_b else None

        # The target logits: d loss / d target = g * (p_target - 1) where this shard owns it.
        p_target = torch.exp(t_local - lse)
        grad_target = torch.where(has, g * (p_target - 1.0), torch.zeros_like(p_target))
        part_x, part_w, part_b, grad_norms = target_grads(leaves, target, grad_target)
        if num_rows and (want_x or want_w or want_b or update is not None):
            grads = (grad_x, grad_w, grad_b)
            _chunked_grads(
                opts, xg, weight, bias, index, inv_norm, lse, tcol, g, num_rows, grads,
                (part_w, col), update,
            )  # fmt: skip
        # part_w went into each chunk's dW rows above (or into the update)
        grad_x, grad_weight, grad_bias = finish_backward(
            (part_x, None, part_b), (grad_x, grad_w, grad_b), col, index, tuple(weight.shape),
            opts.marks,
        )  # fmt: skip
        if grad_x is not None:
            grad_x = grad_x.to(ctx.x_dtype)
        ctx.graph = None
        return grad_x, grad_weight, grad_bias, grad_norms, None, None, None, None, None, None


def _chunked_grads(
    opts: CoreOptions,
    xg: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    index: torch.Tensor | None,
    inv_norm: torch.Tensor,
    lse: torch.Tensor,
    tcol: torch.Tensor,
    g: torch.Tensor,
    num_rows: int,
    grads: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
    target_w: tuple[torch.Tensor | None, torch.Tensor],
    update: Callable[[torch.Tensor | slice, torch.Tensor], None] | None = None,
) -> None:
    """The GEMM part of the gradients, one chunk of class rows at a time.

    For each chunk the kernel writes ``G_raw`` = d loss / d (x . w_j) (B x chunk, GEMM dtype) and
    column-sum partials; then ``grad_x += G_raw @ W_chunk`` and ``grad_w[chunk] = G_raw^T @ X``
    minus its component along ``w_j`` (the norm's term), plus the target rows' gradient
    ``target_w`` = (values (B, D), their columns) that falls in the chunk; ``grad_b[chunk] =
    s * sum_i G_ij``. With ``update`` the chunk's dW rows go to it (one chunk-sized buffer)
    instead of into ``grad_w``. Rounding follows the reference: the GEMM operands in the GEMM
    dtype, dW rows cast to float32.
    """
    grad_x, grad_w, grad_b = grads  # (B, D) float32, (N, D) and (N,) values; None: not wanted
    part_w, col = target_w
    batch, dim = xg.shape
    device = xg.device
    chunk = _chunk_rows(batch, num_rows)
    rows_buf = weight.new_empty((chunk, dim)) if update is not None else None
    graw = torch.empty((batch, chunk), dtype=xg.dtype, device=device)
    parts = triton.cdiv(batch, _min_block_m())
    dots = torch.zeros((parts, chunk), dtype=torch.float32, device=device)
    dbias = torch.zeros((parts, chunk), dtype=torch.float32, device=device)
    index_c, bias_c = _optional_pointers(index, bias, tcol, weight)
    flags = _flags(bias, index, opts)
    scale = float(opts.margin.scale)
    for cols, w in _blocks(weight, index, num_rows, step=chunk):
        width = cols.stop - cols.start
        g_raw = graw[:, :width]
        grid = lambda meta, width=width: (  # noqa: E731
            triton.cdiv(batch, meta["BLOCK_M"]),
            triton.cdiv(width, meta["BLOCK_N"]),
        )
        _grad_chunk_kernel[grid](
            xg, weight, index_c, bias_c, inv_norm, tcol, lse, g_raw, dots, dbias,
            batch, num_rows, dim, xg.stride(0), weight.stride(0), cols.start, width, chunk,
            scale, float(opts.filter_threshold or 0.0), float(opts.margin.cos_limit or 0.0), g,
            **flags,
            PRECISION=_precision(xg.dtype), UPCAST=_upcast(xg.dtype),
        )  # fmt: skip
        if grad_x is not None:
            grad_x += _mm(g_raw, w, opts.gemm_dtype)
        if grad_w is not None or rows_buf is not None:
            # Rows of the contiguous (N, D) sparse values, written in place; or the update's buffer.
            gw = grad_w[cols] if rows_buf is None else rows_buf[:width]
            _mm_into(gw, g_raw.t(), xg, opts.gemm_dtype)
            if flags["NORMALIZE_W"]:  # w_j / |w_j|: dW_j -= (dW_j . w_j) / |w_j|^2 * w_j
                coef = dots[:, :width].sum(0) * inv_norm[cols].square()
                gw.addcmul_(w, coef.unsqueeze(1).to(w.dtype), value=-1.0)
            if part_w is not None:  # the target rows in this chunk; the others add zero (no sync)
                local = col - cols.start
                inside = ((local >= 0) & (local < width)).unsqueeze(1)
                values = torch.where(inside, part_w, 0.0).to(gw.dtype)
                gw.index_add_(0, local.clamp(0, width - 1), values)
            if update is not None:
                update(cols if index is None else index[cols], gw)
        if grad_b is not None:
            grad_b[cols] = (dbias[:, :width].sum(0) * scale).to(grad_b.dtype)


def _optional_pointers(
    index: torch.Tensor | None, bias: torch.Tensor | None, tcol: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The index and bias pointers of a launch; an absent one passes a tensor of the right kind
    that the kernel never reads (USE_INDEX / HAS_BIAS is off)."""
    return (
        index.contiguous() if index is not None else tcol,
        bias.contiguous() if bias is not None else weight,
    )


def _flags(
    bias: torch.Tensor | None, index: torch.Tensor | None, opts: CoreOptions
) -> dict[str, bool]:
    return dict(
        USE_INDEX=index is not None,
        NORMALIZE_W=bool(opts.margin.normalize_weight),
        HAS_BIAS=bias is not None,
        FILTER=opts.filter_threshold is not None,
        CLAMP=opts.margin.cos_limit is not None,
    )


def _target_graph(ctx, inputs, target_row, margin, batch):
    """Each row's target logit under a small autograd graph (the margin's, or the plain logit),
    and its leaves (x, the target rows of W and of the bias, the norms)."""
    x, weight, bias, norms = inputs
    need_x, need_w, need_b, need_n = ctx.needs_input_grad[:4]
    with torch.enable_grad():
        x_leaf = x.detach().requires_grad_(need_x)
        w_leaf = weight.index_select(0, target_row).detach().requires_grad_(need_w)
        n_leaf = norms.detach().requires_grad_(need_n) if norms is not None else None
        b_leaf = None
        target = margin(x_leaf, w_leaf, replace(batch, norms=n_leaf))
        if target is None:  # plain softmax: the target logit is the row's ordinary logit
            target = (x_leaf * w_leaf).sum(1) * margin.scale
            if bias is not None:
                b_leaf = bias.index_select(0, target_row).detach().requires_grad_(need_b)
                target = target + b_leaf * margin.scale
    return (x_leaf, w_leaf, b_leaf, n_leaf), target


def fused_margin_softmax_loss(
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
    """:func:`partialfc.heads._core.margin_softmax_loss` without storing the logits.

    Raises:
        ValueError: the margin reshapes its non-target logits (``target_only`` False), or the head
            has sub-centres: no kernel here does either.
    """
    check_fused_device(x.device)
    if not opts.margin.target_only:
        raise ValueError(fused_refusal(opts.margin))
    if opts.sub_centers != 1:  # PartialFC refuses these before any forward
        raise ValueError("the fused kernels score one row per class, not sub-centres")
    batch = batch or MarginBatch()
    return _FusedMarginSoftmaxLoss.apply(
        x, weight, bias, batch.norms, index, col, target_row, has, opts, replace(batch, norms=None)
    )


def fused_refusal(margin) -> str:
    """Why the fused kernels cannot run ``margin`` (one that reshapes its non-target logits)."""
    return (
        f"fused=True cannot run {type(margin).__name__}: it reshapes the non-target logits, "
        "which the fused kernels leave as s*cos; use fused='auto' (falls back to the reference "
        "path for it) or fused=False"
    )
