"""``python -m studio``: see ``studio.studio_cli``."""

import sys

from studio.studio_cli import main

sys.exit(main())
