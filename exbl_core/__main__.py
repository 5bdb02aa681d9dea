"""``python -m exbl_core``: see ``exbl_core.cli``."""

import sys

from exbl_core.cli import main

sys.exit(main())
