#!/usr/bin/env python3
"""install-conf: copy a file into place atomically (upstream's /opt/bin/install-conf).

    install-conf SRC DST                 # a CNI config: must be a JSON object, mode 0644
    install-conf --executable SRC DST    # a CNI plugin: mode 0755, content not checked

The copy is written to ``.<name>.tmp`` next to DST, flushed to disk and
renamed over DST, so the container runtime never reads a half-written file.
A config that is not a JSON object is refused (exit 1), because a broken
conflist in /etc/cni/net.d breaks every pod on the node.  Standard library
only: it runs in the image's init containers.
"""

from __future__ import annotations

import json
import os
import sys


def install(source: str, target: str, executable: bool) -> None:
    with open(source, "rb") as handle:
        data = handle.read()
    if not executable:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError(f"{source} is not a JSON object")
    directory, name = os.path.split(os.path.abspath(target))
    temporary = os.path.join(directory, f".{name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o755 if executable else 0o644)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def main(argv: list[str]) -> int:
    executable = argv[:1] == ["--executable"]
    paths = argv[1:] if executable else argv
    if len(paths) != 2:
        print("usage: install-conf [--executable] SRC DST", file=sys.stderr)
        return 2
    try:
        install(paths[0], paths[1], executable)
    except (OSError, ValueError) as err:
        print(f"install-conf: {err}", file=sys.stderr)
        return 1
    print(f"installed {paths[0]} as {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
