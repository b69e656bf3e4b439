"""``python -m launch ...``: see ``launch.launch_cli``."""

import sys

from launch.launch_cli import main

sys.exit(main())
