"""The ``partialfc`` sub-commands, one module each: argument parsing and printing only.

Each module exposes ``configure(parser)`` and ``run(args) -> int`` and is imported by
:mod:`partialfc.cli` only when its command runs. The work itself is done by the library modules
they call (:mod:`partialfc.data`, :mod:`partialfc.eval`, :mod:`partialfc.export`,
:mod:`partialfc.legacy`, ...); nothing in the library imports this package.
"""
