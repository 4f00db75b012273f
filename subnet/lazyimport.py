"""Import a package's submodules without running the package's ``__init__``.

Some third-party packages import everything they ship from their
``__init__``: pyroute2 (~70 modules: conntrack, ndb, ipdb, nl80211, ...) and
the Kubernetes client (``kubernetes/__init__`` loads its config loaders,
dynamic client, websocket streams, informers and utils; ``kubernetes.utils``
loads the YAML creator).  flanneld uses a few modules of each, and every
module loaded costs start-up time and resident memory on every node.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from typing import Any


def defer_package_init(*names: str) -> None:
    """Let ``import name.sub`` load ``name.sub`` without running ``name/__init__.py``.

    Each package is registered as a shell whose ``__init__`` runs the first
    time one of its own attributes is asked for (``from pyroute2 import
    IPRoute`` in the lab or a test), so code that wants the whole package
    still gets it; a subpackage asked for that way (``from pyroute2 import
    netns``) is imported alone.  Nothing happens to a package imported
    already.  Name a parent before its subpackages (``"kubernetes",
    "kubernetes.config"``).
    """
    for name in names:
        if name not in sys.modules:
            _defer(name)


def _defer(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not a package we can find: the import that follows fails as it would
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)
    lock = threading.Lock()  # two threads asking at once run ``__init__`` once

    def complete(attr: str) -> Any:
        found = importlib.util.find_spec(f"{name}.{attr}")
        if found is not None:  # a subpackage (``from pyroute2 import netns``): just that
            return importlib.import_module(f"{name}.{attr}")
        with lock:
            if "__getattr__" in package.__dict__:
                del package.__getattr__
                loader.exec_module(package)
        return getattr(package, attr)

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules[name] = package
