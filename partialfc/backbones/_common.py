"""What every backbone shares: the input contract and activation checkpointing of its blocks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

INPUT_SIZE = 112
"""Side of the square input image. Both families end in a 7x7 map (112 / 16) that the embedding
layer flattens or pools with a fixed 7x7 kernel, so no other size can work."""


def check_input(x: torch.Tensor, model: str) -> None:
    """Raise a clear error for anything but an (N, 3, 112, 112) batch.

    Args:
        x: the input batch.
        model: the backbone's name, for the message.

    Raises:
        ValueError: wrong rank, channel count or spatial size.
    """
    if torch.jit.is_tracing():
        # A trace (the TorchScript ONNX exporter) cannot record this Python check and would warn
        # on every comparison; a wrong size still fails there, at the embedding layer.
        return
    if x.dim() != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
        raise ValueError(
            f"{model} expects images of shape (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) (aligned RGB "
            f"faces; its embedding layer assumes a 7x7 map after the stages), got {tuple(x.shape)}"
        )


@contextlib.contextmanager
def _restore_batchnorm_buffers(module: nn.Module) -> Iterator[None]:
    """Undo whatever the body does to the BatchNorm running statistics inside ``module``.

    Checkpointing re-runs a block's forward during backward, and a training-mode BatchNorm would
    update its running mean/var (and ``num_batches_tracked``) a second time, so a checkpointed model
    would drift from a plain one. The body here is that recomputation.
    """
    saved = [
        (buf, buf.clone())
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for buf in m.buffers(recurse=False)
    ]
    try:
        yield
    finally:  # also when checkpoint stops the recomputation early by raising
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """Apply ``blocks`` in order, each one a checkpoint segment when ``checkpointed``.

    A segment per block (not per stage) bounds the memory of the recomputation to one block:
    a stage-sized segment would rebuild, say, all 30 blocks of iresnet100's third stage at once.
    Only the block inputs are kept for backward. Outputs and gradients are identical to the plain
    forward (dropout RNG state is replayed by checkpoint; BatchNorm statistics are restored).
    """
    use_checkpoint = checkpointed and torch.is_grad_enabled()
    for block in blocks:
        if not use_checkpoint:
            x = block(x)
            continue

        def contexts(block: nn.Module = block) -> tuple[contextlib.AbstractContextManager, ...]:
            return contextlib.nullcontext(), _restore_batchnorm_buffers(block)

        x = checkpoint(block, x, use_reentrant=False, context_fn=contexts)
    return x
