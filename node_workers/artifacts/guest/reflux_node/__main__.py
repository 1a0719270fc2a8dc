"""``python -m reflux_node run|test`` (or ``REFLUX_NODE_MODE``): see :mod:`.harness`."""

from __future__ import annotations

import sys

from .harness import main

if __name__ == "__main__":
    sys.exit(main())
