"""``python -m partialfc`` is the ``partialfc`` console script."""

import sys

from partialfc.cli import main

sys.exit(main())
