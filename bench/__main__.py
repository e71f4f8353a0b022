"""Entry point of ``python -m bench`` (``make bench``, ``make bench-quick``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
