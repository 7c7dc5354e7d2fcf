"""Backbones: images (N, 3, 112, 112) -> embeddings (N, D), built by name from one registry.

    from partialfc import backbones
    model = backbones.create("iresnet50", embedding_size=512, checkpoint_activations=True)
    backbones.list_backbones()  # ['iresnet100', 'iresnet18', ..., 'mbf', 'mobilefacenet', 'r50', ...]

arcface_torch's names (``r18`` ... ``r200``, ``r2060``, ``mbf``, ``mbf_large``, ``vit_t`` ...
``vit_h``) are registered too, with its parameter names, so its ``state_dict`` files load as they
are (docs/migration.md has the table).

A new backbone joins by decorating its factory with :func:`register` in a module imported here;
the registry-driven tests then cover it.
"""

# Imported for their @register side effect: the registry is complete once this package is.
from partialfc.backbones import iresnet, mobilefacenet, tiny, vit
from partialfc.backbones._registry import create, list_backbones, register

__all__ = ["create", "iresnet", "list_backbones", "mobilefacenet", "register", "tiny", "vit"]
