"""``python -m pbe_core.client``."""

import sys

from .cli import main

sys.exit(main())
