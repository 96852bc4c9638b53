"""``python -m tandem.cli`` is the ``tandem`` command (for environments without the script)."""

import sys

from tandem.cli import main

sys.exit(main())
