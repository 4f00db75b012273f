"""The ``flanneld`` entry point: parse flags, set up klog-style logging, run the daemon.

The flags themselves (upstream's set, Go ``flag`` syntax, ``FLANNELD_*``
environment) live in :mod:`flanneld.flags`; this module is the only place
that maps errors to exit codes.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import flanneld
from flanneld.flags import FlagsExit, parse_flags
from flanneld.startphases import CollectorPause
from subnet.errors import (
    ConfigError,
    DataplaneError,
    FlannelError,
    InterfaceError,
    LeaseError,
    StoreError,
)

log = logging.getLogger(__name__)


# --- logging ---------------------------------------------------------------------------

_OUR_LOGGERS = ("flanneld", "subnet", "backends", "cni")
_LEVEL_LETTERS = {logging.DEBUG: "D", logging.INFO: "I", logging.WARNING: "W",
                  logging.ERROR: "E", logging.CRITICAL: "F"}


class KlogFormatter(logging.Formatter):
    """``I1123 14:37:25.123456   4242 flanneld.daemon:88] message`` (klog's header)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.localtime(record.created)
        micros = int((record.created % 1) * 1_000_000)
        letter = _LEVEL_LETTERS.get(record.levelno, "I")
        head = (f"{letter}{time.strftime('%m%d %H:%M:%S', stamp)}.{micros:06d} "
                f"{record.process or 0:>7} {record.name}:{record.lineno}] ")
        text = head + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _LoggingSetup:
    """Installs the stderr handler and levels for one ``main`` run; undone on close."""

    def __init__(self, stream: TextIO) -> None:
        self.handler = logging.StreamHandler(stream)
        self.handler.setFormatter(KlogFormatter())
        self.root = logging.getLogger()
        self.saved = {name: logging.getLogger(name).level for name in ("", *_OUR_LOGGERS)}
        self.root.addHandler(self.handler)
        self.root.setLevel(logging.INFO)

    def verbosity(self, v: int) -> None:
        """-v>=1: our debug logs; -v>=6: third-party debug logs too (klog's HTTP level)."""
        if v >= 1:
            for name in _OUR_LOGGERS:
                logging.getLogger(name).setLevel(logging.DEBUG)
        if v >= 6:
            self.root.setLevel(logging.DEBUG)

    def close(self) -> None:
        self.root.removeHandler(self.handler)
        for name, level in self.saved.items():
            logging.getLogger(name).setLevel(level)


_FAILURES: tuple[tuple[type[FlannelError], str], ...] = (
    (ConfigError, "configuration error"),
    (InterfaceError, "no usable external interface"),
    (LeaseError, "subnet lease failed"),
    (StoreError, "subnet store failed"),
    (DataplaneError, "kernel network setup failed"),
    (FlannelError, "fatal error"),
)


def failure_summary(err: FlannelError) -> str:
    """One line for the operator: what kind of failure, then the error's own text."""
    kind = next(text for cls, text in _FAILURES if isinstance(err, cls))
    return f"{kind}: {err}".replace("\n", " ")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``flanneld`` entry point: flags, logging, then the daemon; returns the exit code."""
    pause = CollectorPause()  # until the peers are programmed: see its docstring
    args = sys.argv[1:] if argv is None else argv
    logs = _LoggingSetup(sys.stderr)
    try:
        flags = parse_flags(args, os.environ)
        logs.verbosity(flags.v)
        log.info("flanneld %s (pyflannel) starting, subnet manager: %s", flanneld.__version__,
                 "kube" if flags.kube_subnet_mgr else "etcd")
        from flanneld.daemon import run

        return run(flags, start_done=pause.finish)
    except FlagsExit as done:
        return int(done.code or 0)
    except FlannelError as err:
        log.error("%s", failure_summary(err))
        return 1
    except KeyboardInterrupt:
        log.info("Interrupted, exiting")
        return 0
    finally:
        pause.resume()
        logs.close()


if __name__ == "__main__":
    sys.exit(main())
