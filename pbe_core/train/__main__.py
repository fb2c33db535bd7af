"""``python -m pbe_core.train``: see :mod:`pbe_core.train.cli`."""

import sys

from .cli import main

sys.exit(main())
