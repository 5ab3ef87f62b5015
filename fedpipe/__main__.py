"""Run the fedpipe command: ``python -m fedpipe``."""

import sys

from fedpipe.cli import main

sys.exit(main())
