"""``python -m deepgrid``: the ``deepgrid`` command, for environments whose scripts are not on PATH."""

import sys

from deepgrid.cli import main

if __name__ == "__main__":
    sys.exit(main())
