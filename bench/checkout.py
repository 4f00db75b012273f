"""The checkout the benchmarks run from, first on ``sys.path``.

So ``python3 bench/<name>.py`` imports this checkout's pyflannel even where
no copy is installed.  Every bench module that imports pyflannel imports this
one before it.
"""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
