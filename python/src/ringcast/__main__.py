"""``python -m ringcast``: see :mod:`ringcast.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
