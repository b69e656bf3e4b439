"""``python -m server.deploy ...``: see ``server.deploy.cli``."""

import sys

from server.deploy.cli import main

sys.exit(main())
