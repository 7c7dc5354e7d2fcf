"""The backbone registry: every backbone joins it with ``@register`` and is built by ``create``.

One registry, as timm's ``@register_model`` / ``create_model``: the trainer, the exporter and the
tests know backbones only by name, so registering a factory is all it takes for a new backbone to be
selectable from a config file and covered by the registry-driven tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

BackboneFactory = Callable[..., nn.Module]
"""``factory(embedding_size=..., **options) -> nn.Module``; the factory's name is the key."""

FactoryT = TypeVar("FactoryT", bound=BackboneFactory)

_BACKBONES: dict[str, BackboneFactory] = {}


def register(factory: FactoryT) -> FactoryT:
    """Add a backbone factory to the registry under its function name.

    Use as a bare decorator. The factory must accept ``embedding_size`` as a keyword and may take
    further keyword options, which :func:`create` passes through.

    Raises:
        ValueError: a backbone of that name is already registered.
    """
    name = factory.__name__
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} is already registered")
    _BACKBONES[name] = factory
    return factory


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return sorted(_BACKBONES)


def create(name: str, embedding_size: int = 512, **kwargs: Any) -> nn.Module:
    """Build a registered backbone with freshly initialised weights.

    Args:
        name: a name from :func:`list_backbones`, e.g. ``"iresnet50"``.
        embedding_size: width of the output embedding.
        **kwargs: backbone options (e.g. ``dropout``, ``checkpoint_activations``); see the factory.
            An option given as ``None`` takes the factory's default (say, checkpointing on for
            the big ViTs), as an absent one does.

    Returns:
        The model, mapping images (N, 3, 112, 112) to embeddings (N, embedding_size).

    Raises:
        ValueError: unknown name (the message lists the known ones) or a bad ``embedding_size``.
    """
    factory = _BACKBONES.get(name)
    if factory is None:
        known = ", ".join(list_backbones()) or "(none registered)"
        raise ValueError(f"unknown backbone {name!r}; known backbones: {known}")
    if (
        isinstance(embedding_size, bool)
        or not isinstance(embedding_size, int)
        or embedding_size < 1
    ):
        raise ValueError(f"embedding_size must be a positive int, got {embedding_size!r}")
    options = {key: value for key, value in kwargs.items() if value is not None}
    return factory(embedding_size=embedding_size, **options)
