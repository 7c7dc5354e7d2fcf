"""A minimal MXNet training loop (``mx.mod.Module``) over partialfc's RecordIO datasets.

It exists to show the legacy path end to end: insightface-layout ``.rec`` -> MXNet symbol
(:func:`get_symbol` on an embedding symbol) -> SGD steps. Images are read with partialfc's own
reader (:class:`partialfc.data.dataset.RecordDataset`), not ``mx.io.ImageRecordIter``: the
insightface layout's record 0 is a header without an image, which ``ImageRecordIter`` would try to
decode. Batches are ``(x - 127.5) / 127.5`` float32 NCHW, labels float32, in a seeded order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from partialfc.legacy._mx import import_mxnet
from partialfc.legacy.symbol import SymbolConfig, get_symbol


def small_embedding(emb_size: int, width: int = 16) -> Any:
    """A tiny conv net symbol, (N, 3, H, W) -> (N, emb_size), named like fresnet's output layers.

    Two stride-2 conv/BN/PReLU stages, global average pooling, ``pre_fc1`` and the ``fc1``
    BatchNorm: enough to train a few steps on CPU in a test.
    """
    mx = import_mxnet()
    x = mx.sym.Variable("data")
    for i, channels in enumerate((width, 2 * width)):
        x = mx.sym.Convolution(
            data=x, num_filter=channels, kernel=(3, 3), stride=(2, 2), pad=(1, 1), no_bias=True,
            name=f"conv{i}",
        )  # fmt: skip
        x = mx.sym.BatchNorm(data=x, fix_gamma=False, eps=2e-5, name=f"bn{i}")
        x = mx.sym.LeakyReLU(data=x, act_type="prelu", name=f"relu{i}")
    x = mx.sym.Pooling(data=x, global_pool=True, kernel=(1, 1), pool_type="avg", name="pool")
    x = mx.sym.FullyConnected(data=mx.sym.flatten(x), num_hidden=emb_size, name="pre_fc1")
    return mx.sym.BatchNorm(data=x, fix_gamma=True, eps=2e-5, name="fc1")


def record_batches(
    root: str | os.PathLike[str], batch_size: int, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless ``(images (B, 3, H, W) float32, labels (B,) float32)`` from an insightface folder.

    Every epoch visits the images in a new order drawn from ``seed``; a last partial batch is
    dropped (the bound module has a fixed batch size).

    Raises:
        ValueError: the dataset has fewer than ``batch_size`` images.
    """
    from partialfc.data.dataset import RecordDataset

    dataset = RecordDataset(root)
    if len(dataset) < batch_size:
        raise ValueError(f"{root} has {len(dataset)} images, fewer than batch_size={batch_size}")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(dataset))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            samples = [dataset.load(int(i)) for i in order[start : start + batch_size]]
            images = np.stack([img.transpose(2, 0, 1) for img, _ in samples]).astype(np.float32)
            images = (images - np.float32(127.5)) * np.float32(1.0 / 127.5)
            labels = np.asarray([label for _, label in samples], dtype=np.float32)
            yield images, labels


@dataclass
class TrainResult:
    """What :func:`train` did."""

    losses: list[float] = field(default_factory=list)
    """Training loss of every step (cross-entropy of the softmax output, or the triplet loss)."""
    module: Any = None
    """The trained ``mx.mod.Module`` (``module.get_params()`` gives the arrays)."""


def train(
    root: str | os.PathLike[str],
    cfg: Any,
    steps: int,
    embedding: Any | None = None,
    lr: float = 0.1,
    momentum: float = 0.9,
    wd: float = 5e-4,
    seed: int = 0,
) -> TrainResult:
    """Train ``get_symbol(cfg, embedding)`` for ``steps`` SGD steps on one CPU context.

    Args:
        root: insightface-layout dataset folder (``partialfc synth`` or ``partialfc pack``).
        cfg: insightface config fields for :func:`get_symbol` (``per_batch_size`` is the batch
            size; ``num_classes`` must cover the dataset's labels).
        steps: optimizer steps.
        embedding: the embedding symbol (default: :func:`small_embedding` of ``emb_size``).
        lr: learning rate.
        momentum: SGD momentum.
        wd: weight decay (scaled per parameter by ``wd_mult``, as MXNet does).
        seed: seeds MXNet's initialisers and the batch order.

    Raises:
        ValueError: ``steps`` < 1, or a loss other than softmax / margin_softmax (the triplet
            losses need batches arranged as anchor/positive/negative thirds, which this loop
            does not build).
    """
    c = cfg if isinstance(cfg, SymbolConfig) else SymbolConfig.from_any(cfg)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if c.loss_name not in ("softmax", "margin_softmax"):
        raise ValueError(
            f"cfg.loss_name: this loop trains softmax or margin_softmax, not {c.loss_name!r}"
        )
    if c.per_batch_size < 1:
        raise ValueError(f"cfg.per_batch_size must be >= 1, got {c.per_batch_size}")
    mx = import_mxnet()
    mx.random.seed(seed)
    np.random.seed(seed)  # some MXNet initialisers draw from numpy's global generator
    batches = record_batches(root, c.per_batch_size, seed)
    images, labels = next(batches)
    if labels.max() >= c.num_classes:
        raise ValueError(
            f"cfg.num_classes={c.num_classes} but the data has label {int(labels.max())}"
        )
    symbol = get_symbol(c, embedding if embedding is not None else small_embedding(c.emb_size))
    module = mx.mod.Module(
        symbol, data_names=("data",), label_names=("softmax_label",), context=mx.cpu()
    )
    module.bind(
        data_shapes=[("data", images.shape)], label_shapes=[("softmax_label", labels.shape)]
    )
    # Variables with their own init (fc7_weight: Normal(0.01)) keep it; Xavier for the rest.
    module.init_params(
        initializer=mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2)
    )
    module.init_optimizer(
        optimizer="sgd",
        optimizer_params={"learning_rate": lr, "momentum": momentum, "wd": wd, "rescale_grad": 1.0},
    )  # SoftmaxOutput(normalization='valid') already divides the gradient by the batch size
    result = TrainResult(module=module)
    for step in range(steps):
        if step:
            images, labels = next(batches)
        batch = mx.io.DataBatch(data=[mx.nd.array(images)], label=[mx.nd.array(labels)])
        module.forward_backward(batch)
        module.update()
        probs = module.get_outputs()[1].asnumpy()  # [embedding, softmax, (ce_loss)]
        target = probs[np.arange(len(labels)), labels.astype(np.int64)].astype(np.float64)
        result.losses.append(float(-np.log(np.maximum(target, 1e-300)).mean()))
    return result
