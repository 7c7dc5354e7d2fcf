"""Vision Transformer for faces as insightface's arcface_torch builds it (``vit_t`` ... ``vit_h``).

Layout, for a 112x112 RGB face (D: width, P = 144 patches, E: embedding)::

    patch_embed.proj  conv 9x9/9 (3->D) on 112 px: a 12x12 grid; the last 4 rows and
                      columns of pixels fall outside it and are never seen      P x D
    + pos_embed (1, P, D), learned, no class token
    [training, mask_ratio > 0: keep a random subset of the patches per image]
    blocks.<i>        x + drop_path(attn(norm1(x))); x + drop_path(mlp(norm2(x)))
                      attn: qkv (no bias), softmax(q k^T / sqrt(D/heads)) v, proj
                      mlp: fc1 (D->4D) -> ReLU6 -> fc2 (4D->D)
    norm              LayerNorm
    [the dropped patches come back as the learned mask_token, in their places]   P x D
    feature           flatten -> Linear (P*D->D, no bias) -> BatchNorm1d -> Linear (D->E, no
                      bias) -> BatchNorm1d (both eps 2e-5)                          E

Parameter and buffer names and shapes are arcface_torch's (``patch_embed.proj``, ``pos_embed``,
``mask_token``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``,
``feature.{0,1,2,3}``), so its ``state_dict`` loads with ``strict=True``. Its random draws are
arcface_torch's as well (one ``torch.rand(N, P)`` for the mask, one Bernoulli per sample and
branch for drop-path), so a training forward from the same seed matches too.

Where arcface_torch's code differs from its own names, we follow the code: its forward calls
``random_masking`` without the model's ratio, so every ViT with a non-zero ``mask_ratio`` masks 10%
of the patches (``vit_b_dp005_mask_005`` included). Its forced fp16 autocast around the MLP is not
reproduced; the trainer's ``train.precision`` decides. Attention's softmax runs in float32 under
autocast, as there.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from partialfc.backbones._common import INPUT_SIZE, check_input, run_blocks
from partialfc.backbones._registry import register

PATCH_SIZE = 9
NUM_PATCHES = (INPUT_SIZE // PATCH_SIZE) ** 2  # 12 x 12
ARCFACE_TORCH_MASK_RATIO = 0.1  # what arcface_torch's forward masks whenever mask_ratio > 0


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch per sample with probability ``p``.

    Kept branches are scaled by ``1 / (1 - p)`` so that the expectation is unchanged; one
    Bernoulli draw per sample, shaped (N, 1, 1), as timm's ``DropPath`` that arcface_torch uses.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (N, ...)."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention; ``qkv`` has no bias, ``proj`` has one."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, D) -> (N, L, D)."""
        n, length, dim = x.shape
        # (N, L, 3D) -> (3, N, heads, L, D/heads): the layout of arcface_torch's qkv weight rows.
        q, k, v = self.qkv(x).reshape(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        device = q.device.type
        no_autocast = (
            torch.autocast(device, enabled=False)
            if torch.is_autocast_enabled(device)
            else contextlib.nullcontext()
        )
        with no_autocast:  # the softmax in float32 (or float64) even under bf16/fp16 autocast
            dtype = torch.promote_types(q.dtype, torch.float32)
            out = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype))
        # Back to the input's precision: a float16 model (ONNX --fp16) has float16 proj weights.
        out = out.to(q.dtype).transpose(1, 2).reshape(n, length, dim)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    """fc1 -> ReLU6 -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, D) -> (N, L, D)."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block with stochastic depth on both residual branches."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, dropout: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        # Identity where the rate is 0 (the first block), as arcface_torch: no random draw there.
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, D) -> (N, L, D)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping 9x9 patches of a 112x112 image -> (N, 144, D) tokens."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 112, 112) -> (N, 144, D)."""
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """ViT backbone: (N, 3, 112, 112) images -> (N, embedding_size) embeddings.

    Initialisation is arcface_torch's: Linear weights truncated normal (std 0.02) and biases 0,
    LayerNorm 1 and 0, ``pos_embed`` truncated normal (std 0.02), ``mask_token`` normal (std
    0.02), the patch convolution and BatchNorm PyTorch's defaults. Without masking the
    ``mask_token`` is never used, so it is frozen (``requires_grad=False``): DDP would otherwise
    wait for its gradient (arcface_torch runs DDP with ``find_unused_parameters=True`` instead).

    Args:
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads.
        embedding_size: width E of the output embedding.
        mlp_ratio: hidden width of the MLP over D.
        drop_path_rate: stochastic-depth rate of the last block, rising linearly from 0 at the
            first.
        mask_ratio: fraction of the patches dropped per image in training (never in eval); the
            dropped ones are replaced by ``mask_token`` after the blocks.
        dropout: dropout after the positional embedding, in the MLP and after the attention's
            projection (arcface_torch's ``drop_rate``; 0 in all its models), in [0, 1).
        checkpoint_activations: recompute each block's activations in backward instead of
            storing them (``torch.utils.checkpoint``, non-reentrant); same outputs and gradients.
        name: the name used in error messages.
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        embedding_size: int = 512,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        mask_ratio: float = 0.0,
        dropout: float = 0.0,
        checkpoint_activations: bool = False,
        name: str = "vit",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        for option, value in (
            ("drop_path_rate", drop_path_rate),
            ("mask_ratio", mask_ratio),
            ("dropout", dropout),
        ):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{option} must be in [0, 1), got {value}")
        self.name = name
        self.embed_dim = int(embed_dim)
        self.embedding_size = int(embedding_size)
        self.mask_ratio = float(mask_ratio)
        self.checkpoint_activations = bool(checkpoint_activations)

        self.patch_embed = PatchEmbed(self.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_PATCHES, self.embed_dim))
        self.pos_drop = nn.Dropout(dropout)
        # The rates as arcface_torch computes them (float32 linspace); on the CPU so that building
        # under a meta device still yields numbers.
        rates = torch.linspace(0.0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(self.embed_dim, num_heads, mlp_ratio, rate, dropout) for rate in rates
        )
        self.norm = nn.LayerNorm(self.embed_dim)
        self.feature = nn.Sequential(
            nn.Linear(self.embed_dim * NUM_PATCHES, self.embed_dim, bias=False),
            nn.BatchNorm1d(self.embed_dim, eps=2e-5),
            nn.Linear(self.embed_dim, self.embedding_size, bias=False),
            nn.BatchNorm1d(self.embedding_size, eps=2e-5),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.mask_token.requires_grad_(self.mask_ratio > 0.0)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _keep(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep ``int(P * (1 - mask_ratio))`` random patches of each image.

        Returns the kept tokens (N, K, D) and ``restore`` (N, P): sorting the kept tokens followed
        by the dropped ones by ``restore`` puts every patch back in its place.
        """
        n, length, dim = x.shape
        keep = int(length * (1 - self.mask_ratio))
        order = torch.argsort(torch.rand(n, length, device=x.device), dim=1)  # small: kept
        restore = torch.argsort(order, dim=1)
        kept = torch.gather(x, 1, order[:, :keep, None].expand(-1, -1, dim))
        return kept, restore

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, 112, 112) -> embeddings (N, embedding_size), not normalised."""
        check_input(x, self.name)
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)  # (N, P, D)
        masking = self.training and self.mask_ratio > 0.0
        if masking:
            x, restore = self._keep(x)  # (N, K, D)
        x = self.norm(run_blocks(self.blocks, x, self.checkpoint_activations))
        if masking:
            n, kept, dim = x.shape
            fill = self.mask_token.to(x.dtype).expand(n, NUM_PATCHES - kept, dim)
            x = torch.gather(torch.cat([x, fill], dim=1), 1, restore[..., None].expand(-1, -1, dim))
        return self.feature(x.flatten(1))


# arcface_torch's ViTs: (width, depth, drop-path rate, masking, gradient checkpointing). All have
# 8 heads and MLP ratio 4; the names ending in dp005 / mask0 are its WebFace42M recipes.
_ARCFACE_TORCH_VITS = {
    "vit_t": (256, 12, 0.1, True, False),
    "vit_t_dp005_mask0": (256, 12, 0.05, False, False),
    "vit_s": (512, 12, 0.1, True, False),
    "vit_s_dp005_mask_0": (512, 12, 0.05, False, False),
    "vit_b": (512, 24, 0.1, True, True),
    "vit_b_dp005_mask_005": (512, 24, 0.05, True, True),
    "vit_l_dp005_mask_005": (768, 24, 0.05, True, True),
    "vit_h": (1024, 48, 0.1, False, True),
}


def _arcface_torch_vit(name: str, embedding_size: int, **kwargs: Any) -> VisionTransformer:
    width, depth, drop_path, masked, checkpointed = _ARCFACE_TORCH_VITS[name]
    options: dict[str, Any] = {
        "drop_path_rate": drop_path,
        "mask_ratio": ARCFACE_TORCH_MASK_RATIO if masked else 0.0,
        "checkpoint_activations": checkpointed,
        "name": name,
        **kwargs,
    }
    return VisionTransformer(width, depth, 8, embedding_size=embedding_size, **options)


@register
def vit_t(embedding_size: int = 512, **kwargs: Any) -> VisionTransformer:
    """ViT-T: width 256, 12 blocks, drop-path 0.1, masking; options as :class:`VisionTransformer`."""
    return _arcface_torch_vit("vit_t", embedding_size, **kwargs)


@register
def vit_t_dp005_mask0(embedding_size: int = 512, **kwargs: Any) -> VisionTransformer:
    """ViT-T with drop-path 0.05 and no masking."""
    return _arcface_torch_vit("vit_t_dp005_mask0", embedding_size, **kwargs)


@register
def vit_s(embedding_size: int = 512, **kwargs: Any) -> VisionTransformer:
    """ViT-S: width 512, 12 blocks, drop-path 0.1, masking."""
    return _arcface_torch_vit("vit_s", embedding_size, **kwargs)


@register
def vit_s_dp005_mask_0(embedding_size: int = 512, **kwargs: Any) -> VisionTransformer:
    """ViT-S with drop-path 0.05 and no masking."""
    return _arcface_torch_vit("vit_s_dp005_mask_0", embedding_size, **kwargs)


@register
def vit_b(embedding_size: int = 512, **kwargs: Any) -> VisionTransformer:
    """ViT-B: width 512, 24 blocks, drop-path 0.1, masking, checkpointed blocks."""
    return _arcface_torch_vit("vit_b", embedding_size, **kwargs)


@register
def vit_b_dp005_mask_005(embedding_size: int = 512, **kwargs: Any) -> VisionTransformer:
    """ViT-B with drop-path 0.05 and masking (10%, as arcface_torch's code; see the module)."""
    return _arcface_torch_vit("vit_b_dp005_mask_005", embedding_size, **kwargs)


@register
def vit_l_dp005_mask_005(embedding_size: int = 512, **kwargs: Any) -> VisionTransformer:
    """ViT-L: width 768, 24 blocks, drop-path 0.05, masking (10%), checkpointed blocks."""
    return _arcface_torch_vit("vit_l_dp005_mask_005", embedding_size, **kwargs)


@register
def vit_h(embedding_size: int = 512, **kwargs: Any) -> VisionTransformer:
    """ViT-H: width 1024, 48 blocks, drop-path 0.1, no masking, checkpointed blocks."""
    return _arcface_torch_vit("vit_h", embedding_size, **kwargs)
