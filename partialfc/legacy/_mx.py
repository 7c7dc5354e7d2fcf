"""The one place that imports MXNet, so every caller gets the same clear error without it."""

from __future__ import annotations

from types import ModuleType

INSTALL_HINT = "pip install partialfc[mxnet]  (mxnet==1.9.1, which needs numpy<1.24)"


def import_mxnet() -> ModuleType:
    """Import and return ``mxnet``.

    Raises:
        ImportError: MXNet is missing or cannot load (mxnet 1.9.1 fails on numpy >= 1.24 with an
            AttributeError inside its import, which is reported here the same way).
    """
    try:
        import mxnet
    except (ImportError, AttributeError, OSError) as err:
        raise ImportError(
            f"partialfc.legacy needs MXNet, which could not be imported ({err}); install the "
            f"extra: {INSTALL_HINT}"
        ) from err
    return mxnet
