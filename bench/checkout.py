"""The checkout the benchmarks run from, first on ``sys.path``.

So ``python3 bench/<name>.py`` imports this checkout's pyflannel even where
no copy is installed.  Every bench module that imports pyflannel imports this
one before it.  :func:`compile_bytecode` makes sure the daemons a bench
starts load compiled bytecode, as an installed package does.
"""

from __future__ import annotations

import compileall
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


PACKAGES = ("flanneld", "backends", "subnet", "cni")


def compile_bytecode() -> None:
    """Write this checkout's ``__pycache__`` (only what is stale).

    ``pip install`` compiles a package's modules, but an editable checkout
    under ``PYTHONDONTWRITEBYTECODE`` would compile every module at every
    daemon start (about 0.15 s), which a bench of start-up must not count.
    """
    for package in PACKAGES:
        compileall.compile_dir(os.path.join(REPO, package), quiet=1)
