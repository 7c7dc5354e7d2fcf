"""MXNet symbol-API path: insightface arcface_mxnet's ``get_symbol`` and checkpoint converters.

MXNet is an optional dependency (``pip install partialfc[mxnet]``). Importing this package never
imports MXNet; each function that needs it does so when called, and raises an ImportError naming
the extra when it is missing.

* :func:`get_symbol`: insightface's training outputs on top of any embedding symbol.
* :func:`fresnet_embedding`: insightface's MXNet ``fresnet`` (IResNet) embedding symbol.
* :mod:`partialfc.legacy.convert`: ``partialfc convert mxnet2torch | torch2mxnet``.
* :func:`partialfc.legacy.train.train`: a minimal ``mx.mod.Module`` loop over our RecordIO.
"""

from partialfc.legacy._mx import INSTALL_HINT
from partialfc.legacy.fresnet import fresnet_embedding
from partialfc.legacy.symbol import LOSSES, SymbolConfig, get_symbol

__all__ = ["INSTALL_HINT", "LOSSES", "SymbolConfig", "fresnet_embedding", "get_symbol"]
