"""The ``partialfc`` sub-commands: argument parsing and printing only (the work is in the library)."""
