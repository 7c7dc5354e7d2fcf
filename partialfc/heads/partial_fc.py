"""PartialFC: the class-centre matrix sharded by rows, one softmax across all ranks."""

from __future__ import annotations

import functools
import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from partialfc.distributed import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_max,
    all_reduce_sum_identity_grad,
    rank,
    shard_range,
    world_size,
)
from partialfc.heads import _subcenters
from partialfc.heads._core import CoreOptions, SparseGradMarks, margin_softmax_loss
from partialfc.heads._fused import (
    FUSED_DTYPES,
    check_fused_device,
    fused_margin_softmax_loss,
    fused_refusal,
    triton_available,
)
from partialfc.margins import Margin, MarginBatch
from partialfc.optim import RowSparseOptimizer
from partialfc.seeding import mix_seed

log = logging.getLogger(__name__)

INIT_BLOCK_ROWS = 4096  # centres are initialised in blocks seeded by (seed, block): see _init_rows


class PartialFC(nn.Module):
    """Sharded margin-softmax head, optionally sampling negative classes ("Partial FC").

    Rank r of the group owns classes ``[class_start, class_start + num_local)``
    (:func:`partialfc.shard_range`). Each forward gathers the global batch, scores it against this
    rank's (sampled) centres and forms one softmax over all classes of all ranks. The returned loss
    is the mean over the global batch, identical on every rank; the gradient it sends to the local
    embeddings is the exact partial derivative of that loss (a DDP backbone must *sum* its gradients
    across ranks: see :func:`partialfc.distributed.use_global_loss_gradients`).

    Args:
        margin: a :mod:`partialfc.margins` member (ArcFace, CosFace, SphereFace, Softmax, ...).
        embedding_size: width D of the embeddings.
        num_classes: total number of classes C over all ranks.
        sample_rate: fraction of this rank's classes scored per step; positives are always kept.
            The attribute may change between forwards (a schedule): each forward reads it, and
            its negatives depend only on (seed, forward count, rank) and that rate.
        process_group: the ranks sharing the head; None: the default group, or this process alone
            when torch.distributed is not initialised.
        seed: seeds the centres' initialisation and the sampling of negatives.
        interclass_filtering_threshold: if > 0, non-target cosines above it are set to 0 (and get
            no gradient): insightface's filter against near-duplicate identities in noisy data.
        validate: check labels, shapes, finiteness and equal batch sizes on every call. Costs one
            tiny all-reduce and one host synchronisation per step; turn off in tuned training.
        init_std: standard deviation of the normal initialisation of the centres.
        device: device of the shard.
        dtype: dtype of the shard (float32 default; float64 for exact references).
        fused: compute the loss with the Triton kernels of :mod:`partialfc.heads._fused`, which
            never store the (B, N) logits: ``True`` (CUDA, or CPU under ``TRITON_INTERPRET=1``),
            ``False`` (the reference path), or ``"auto"``: fused for a float32 shard on CUDA
            when Triton is installed. The semantics are the same either way. A margin that
            reshapes its non-target logits (CurricularFace) has no kernel: ``True`` refuses it,
            ``"auto"`` takes the reference path; so do sub-centres.
        sub_centers: K rows per class (Sub-center ArcFace), class-major: global row ``c*K + k``
            is sub-centre k of class c, and a class's rows stay on one rank. A class's cosine is
            the maximum over its rows (its gradient goes to that row), then the margin applies.
            Needs a margin with normalised centres (not Softmax or LSoftmax).

    After a forward, ``last_index`` holds the local rows used (``last_classes`` the local classes:
    the same without sub-centres) and, for margins that read the
    embeddings' norms (MagFace, AdaFace), ``last_norms`` the ``|x|`` (b,) of this rank's rows.
    """

    def __init__(
        self,
        margin: Margin,
        embedding_size: int = 512,
        num_classes: int = 1000,
        sample_rate: float = 1.0,
        process_group: dist.ProcessGroup | None = None,
        seed: int = 0,
        interclass_filtering_threshold: float = 0.0,
        validate: bool = True,
        init_std: float = 0.01,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        fused: bool | str = False,
        sub_centers: int = 1,
    ) -> None:
        super().__init__()
        if fused not in (True, False, "auto"):
            raise ValueError(f"fused must be True, False or 'auto', got {fused!r}")
        if not isinstance(margin, Margin):
            raise TypeError(
                f"margin must be a partialfc.margins.Margin, got {type(margin).__name__}"
            )
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if interclass_filtering_threshold < 0:
            raise ValueError(
                f"interclass_filtering_threshold must be >= 0 (0 disables), got "
                f"{interclass_filtering_threshold}"
            )
        if interclass_filtering_threshold > 0 and not (
            margin.normalize_embeddings and margin.normalize_weight
        ):
            raise ValueError(
                "interclass_filtering_threshold compares cosines and needs a normalised margin "
                f"(ArcFace, CosFace, NormFace, CombinedMargin), not {type(margin).__name__}"
            )
        if margin.needs_target_cos and not margin.normalize_embeddings:
            raise ValueError(f"{type(margin).__name__}: target cosines need normalised embeddings")
        if fused is True and not margin.target_only:
            raise ValueError(fused_refusal(margin))
        _subcenters.check(sub_centers, margin, fused)
        self.margin = margin.to(device) if device is not None else margin
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.process_group = process_group
        self.seed = int(seed)
        self.interclass_filtering_threshold = float(interclass_filtering_threshold)
        self.validate = bool(validate)
        self.fused = fused
        self.sub_centers = int(sub_centers)
        self.world_size = world_size(process_group)
        self.rank = rank(process_group)
        self.class_start, self.num_local = shard_range(num_classes, self.world_size, self.rank)
        dtype = dtype or torch.get_default_dtype()
        self.weight = nn.Parameter(self._init_rows(init_std, torch.device(device or "cpu"), dtype))
        self.bias = (
            nn.Parameter(torch.zeros(self.num_local, device=device, dtype=dtype))
            if margin.has_bias
            else None
        )
        self.step = 0  # forward calls so far; with (seed, rank) it seeds the sampling
        self.last_index: torch.Tensor | None = None
        self.last_classes: torch.Tensor | None = None
        self.last_norms: torch.Tensor | None = None
        self._row_update = None  # set by fuse_update
        self._marks = SparseGradMarks()
        for param in (self.weight, self.bias):
            if param is not None:
                param.register_post_accumulate_grad_hook(self._marks.restore_flag)

    def _init_rows(self, std: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        # Global row i gets the same initial value whatever the world size: rows are drawn in
        # blocks of INIT_BLOCK_ROWS from generators seeded by (seed, block), and each rank keeps
        # the part of the blocks that overlaps its range (its classes' K rows each).
        k = self.sub_centers
        start, stop = self.class_start * k, (self.class_start + self.num_local) * k
        out = torch.empty(stop - start, self.embedding_size, device=device, dtype=dtype)
        gen = torch.Generator(device=device)
        for block in range(start // INIT_BLOCK_ROWS, (stop - 1) // INIT_BLOCK_ROWS + 1):
            lo = block * INIT_BLOCK_ROWS
            gen.manual_seed(mix_seed("centres", self.seed, block))
            rows = torch.empty(INIT_BLOCK_ROWS, self.embedding_size, device=device, dtype=dtype)
            rows.normal_(0.0, std, generator=gen)
            a, b = max(start, lo), min(stop, lo + INIT_BLOCK_ROWS)
            out[a - start : b - start] = rows[a - lo : b - lo]
        return out

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
            f"sample_rate={self.sample_rate}, sub_centers={self.sub_centers}, "
            f"rank={self.rank}/{self.world_size}, "
            f"classes=[{self.class_start}, {self.class_start + self.num_local})"
        )

    def get_extra_state(self) -> dict[str, int]:
        return {
            "step": self.step,
            "class_start": self.class_start,
            "num_local": self.num_local,
            "num_classes": self.num_classes,
            "sub_centers": self.sub_centers,
        }

    def set_extra_state(self, state: dict[str, int]) -> None:
        if (state["class_start"], state["num_local"]) != (self.class_start, self.num_local):
            raise ValueError(
                f"state holds classes [{state['class_start']}, "
                f"{state['class_start'] + state['num_local']}) but this rank owns "
                f"[{self.class_start}, {self.class_start + self.num_local}); reshard with "
                "partialfc.checkpoint to change the number of ranks"
            )
        if int(state.get("sub_centers", 1)) != self.sub_centers:
            raise ValueError(
                f"state has {state.get('sub_centers', 1)} sub-centres per class, this head "
                f"{self.sub_centers}"
            )
        self.step = int(state["step"])

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of the global batch.

        Args:
            embeddings: (b, D) this rank's embeddings; every rank passes the same b.
            labels: (b,) global class ids in ``[0, num_classes)``.

        Returns:
            The mean over the global batch of ``-log softmax(target)``, the same on every rank.
        """
        if self.validate:
            self._check_inputs(embeddings, labels)
        group = self.process_group
        margin = self.margin
        x = all_gather_with_grad(embeddings.to(self.weight.dtype), group)  # (B, D)
        y = all_gather_no_grad(labels, group)  # (B,)
        local = y - self.class_start
        has = (local >= 0) & (local < self.num_local)
        local = local.clamp(0, self.num_local - 1)
        if self.sample_rate < 1.0:
            index = self._sample(local, has)
            col = torch.searchsorted(index, local).clamp_(max=max(index.numel() - 1, 0))
        else:
            index, col = None, local
        # The norms of the whole global batch come with the all-gather of x: no collective.
        norms = torch.linalg.vector_norm(x, dim=1) if margin.needs_norms else None  # (B,)
        if margin.normalize_embeddings:
            x = F.normalize(x, dim=1)
        batch = MarginBatch(
            norms=norms,
            target_cos=self._target_cos(x, local, has) if margin.needs_target_cos else None,
            seed=self.seed,
            step=self.step,
        )
        margin.begin_step(batch)  # buffers move once per step, identically on every rank
        device_type = x.device.type
        gemm_dtype = (
            torch.get_autocast_dtype(device_type)
            if torch.is_autocast_enabled(device_type)
            else None
        )
        opts = CoreOptions(
            margin=self.margin,
            filter_threshold=self.interclass_filtering_threshold or None,
            gemm_dtype=gemm_dtype,
            group=group,
            marks=self._marks,
            row_update=self._row_update,
            sub_centers=self.sub_centers,
        )
        num_rows = self.num_local if index is None else index.numel()  # classes
        core = fused_margin_softmax_loss if self._use_fused(x) and num_rows else margin_softmax_loss
        with torch.autocast(device_type, enabled=False):
            loss = core(x, self.weight, self.bias, index, col, local, has, opts, batch)
            if norms is not None:
                loss = self._add_regularizer(loss, norms, embeddings.shape[0])
                start = self.rank * embeddings.shape[0]  # this rank's rows of the global batch
                self.last_norms = norms[start : start + embeddings.shape[0]].detach()
        self.last_classes = (
            index if index is not None else torch.arange(self.num_local, device=x.device)
        )
        self.last_index = _subcenters.expand_rows(self.last_classes, self.sub_centers)
        self.step += 1
        return loss

    def _add_regularizer(self, loss: torch.Tensor, norms: torch.Tensor, b: int) -> torch.Tensor:
        """``loss`` plus the margin's norm regulariser (MagFace's g) of the global batch, counted
        once: its value is the global mean on every rank, but each rank differentiates only its
        own b rows of the gathered norms, so the all-gather's reduce-scatter sums one
        gradient per row, not one per rank."""
        start = self.rank * b
        own = torch.zeros_like(norms, dtype=torch.bool)
        own[start : start + b] = True
        reg = self.margin.regularizer(torch.where(own, norms, norms.detach()))
        return loss if reg is None else loss + reg.to(loss.dtype)

    @torch.no_grad()
    def _target_cos(self, x: torch.Tensor, local: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        """(B,) each row's cosine with its class centre (its closest sub-centre), on every rank
        (x normalised)."""
        k = self.sub_centers
        rows = self.weight.view(self.num_local, k, self.embedding_size).index_select(0, local)
        cos = torch.einsum("bd,bkd->bk", x, F.normalize(rows, dim=2)).amax(1)  # (B,)
        cos = torch.where(has, cos, 0.0)
        # One all-reduce (SUM) of B numbers: each row's target lives on exactly one rank, before
        # any logit is formed (CurricularFace's t and thresholds, ElasticFace+'s pairing need it).
        return all_reduce_sum_identity_grad(cos, self.process_group)

    def fuse_update(self, optimizer: RowSparseOptimizer | None) -> None:
        """Let the fused backward apply ``optimizer``'s update to the class centres itself.

        Each chunk of dW rows goes through ``optimizer.update_rows`` (:class:`SparseSGD` or
        :class:`SparseAdamW`; AdamW counts the chunks of one backward as one step) as soon as it is
        computed, so the step never holds the (N, D) values of the sparse gradient (244 MiB at
        125k rows and D = 512): ``self.weight.grad`` stays None, and ``optimizer.step()``, still
        called every step, updates whatever else it holds (the bias) and skips the centres. The
        update is the same as ``step()``'s; a backward whose loss is not finite updates nothing.
        It takes effect where the fused kernels run; elsewhere the gradient is stored and
        ``step()`` applies it as usual. ``None`` turns it off.

        The update happens during ``backward()``, so exactly one backward may precede each
        ``step()``: no gradient accumulation, no loss scaling (fp16 GradScaler), no gradient
        clipping of the centres. The trainer refuses those combinations (``head.fused_update``).

        Raises:
            ValueError: the head is ``fused=False``, or ``optimizer`` is not a SparseSGD or SparseAdamW holding
                ``self.weight``.
        """
        if optimizer is None:
            self._row_update = None
            return
        if self.fused is False:
            raise ValueError("fuse_update needs fused=True or 'auto': the reference path stores dW")
        if not isinstance(optimizer, RowSparseOptimizer):
            raise ValueError(
                "fuse_update needs a partialfc.SparseSGD or partialfc.SparseAdamW, got "
                f"{type(optimizer).__name__}"
            )
        if not any(p is self.weight for g in optimizer.param_groups for p in g["params"]):
            raise ValueError("fuse_update: the optimizer does not hold this head's weight")
        self._row_update = functools.partial(optimizer.update_rows, self.weight)

    def _use_fused(self, x: torch.Tensor) -> bool:
        if self.fused == "auto":
            return (
                x.is_cuda
                and triton_available()
                and self.weight.dtype == torch.float32
                and self.margin.target_only
                and self.sub_centers == 1
            )
        if self.fused:
            check_fused_device(x.device)
            if self.weight.dtype not in FUSED_DTYPES:
                raise ValueError(
                    f"fused=True computes in float32 (bf16/fp16 GEMMs); the shard is "
                    f"{self.weight.dtype}: use fused=False for float64"
                )
        return bool(self.fused)

    @torch.no_grad()
    def _sample(self, local: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        """Sorted local rows for this step: every positive, then uniform negatives (rule 8)."""
        count = self.num_local
        device = self.weight.device
        positive = torch.zeros(count, dtype=torch.uint8, device=device)
        positive.scatter_reduce_(0, local, has.to(torch.uint8), reduce="amax")
        num_sample = int(self.sample_rate * count)
        if num_sample < local.numel():
            # Only when the batch could hold more positives than the sample needs a host sync.
            num_sample = max(num_sample, int(positive.sum()))
        gen = torch.Generator(device=device)
        gen.manual_seed(mix_seed("sampling", self.seed, self.step, self.rank))
        scores = torch.rand(count, generator=gen, device=device)
        scores.masked_fill_(positive.bool(), 2.0)  # positives outrank every negative
        return scores.topk(num_sample, sorted=False).indices.sort().values

    @torch.no_grad()
    def _check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        # Every rank must reach the same verdict, or the ranks that pass would hang in the next
        # collective: problems are flagged locally and agreed on with one small all-reduce(MAX).
        me = self.rank + 1
        shape_bad = not (
            embeddings.dim() == 2
            and embeddings.shape[1] == self.embedding_size
            and labels.dim() == 1
            and labels.shape[0] == embeddings.shape[0]
        )
        dtype_bad = (
            labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex()
        )
        batch = embeddings.shape[0] if embeddings.dim() >= 1 else 0
        device = self.weight.device
        stats = torch.tensor(
            [batch, -batch, me * shape_bad, me * dtype_bad, 0, 0, 0],
            dtype=torch.int64,
            device=device,
        )
        if not (shape_bad or dtype_bad) and batch > 0:
            stats[4] = -labels.min().to(device)
            stats[5] = labels.max().to(device)
            stats[6] = (~torch.isfinite(embeddings)).any().to(device) * me
        max_b, neg_min_b, shape_rank, dtype_rank, neg_min_label, max_label, nonfinite_rank = (
            all_reduce_max(stats, self.process_group).tolist()
        )
        where = f"rank {self.rank}" if self.world_size > 1 else "input"
        if shape_rank:
            if shape_rank == me:
                raise ValueError(
                    f"PartialFC expects embeddings (batch, {self.embedding_size}) and labels "
                    f"(batch,); {where} got embeddings {tuple(embeddings.shape)} and labels "
                    f"{tuple(labels.shape)}"
                )
            raise ValueError(
                f"rank {shape_rank - 1} passed embeddings or labels of the wrong shape"
            )
        if dtype_rank:
            raise TypeError(
                f"labels must be an integer tensor (global class ids); rank {dtype_rank - 1} "
                f"passed {labels.dtype if dtype_rank == me else 'another dtype'}"
            )
        if max_b != -neg_min_b:
            raise ValueError(
                f"every rank must pass the same batch size; got sizes from {-neg_min_b} to {max_b}"
            )
        if max_b == 0:
            raise ValueError("PartialFC got an empty batch")
        if -neg_min_label < 0 or max_label >= self.num_classes:
            raise ValueError(
                f"labels must be in [0, {self.num_classes}); the global batch has labels from "
                f"{-neg_min_label} to {max_label}"
            )
        if nonfinite_rank:
            raise ValueError(
                f"embeddings contain NaN or Inf (rank {nonfinite_rank - 1}); the backbone diverged "
                "or the input is corrupt"
            )
