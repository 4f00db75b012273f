"""Finding and running the delegate plugin, as libcni's ``invoke`` package does.

The delegate is looked up in ``CNI_PATH`` and run with the caller's
environment (``CNI_COMMAND`` set to the delegated command), the config on
stdin, stdout captured and stderr inherited. ``posix_spawn`` is used
instead of :mod:`subprocess`, which alone would add a third to the plugin's
import time, and the signal numbers come from ``_signal``, not :mod:`signal`,
whose enums would import :mod:`enum`.
"""

from __future__ import annotations

import posix  # not os: see cni.files
from _signal import SIGPIPE, SIGXFSZ  # type: ignore[import-not-found]  # no stub

from cni.errors import INTERNAL, INVALID_NETWORK_CONFIG, CniError
from cni.files import is_file, join
from cni.record import Record

# Python ignores these; a delegate gets them back at their defaults, as from a shell.
_RESET_SIGNALS: tuple[int, int] = (SIGPIPE, SIGXFSZ)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


class PluginResult(Record):
    """How a delegate run ended: its exit status and everything it wrote to stdout."""

    __slots__ = ("returncode", "stdout")
    returncode: int
    stdout: bytes

    def __init__(self, returncode: int, stdout: bytes) -> None:
        self._set("returncode", returncode)
        self._set("stdout", stdout)


def find_plugin(name: str, cni_path: str) -> str:
    """The first regular file ``<dir>/<name>`` over the ``:``-separated ``cni_path``."""
    if not name:
        raise CniError(INVALID_NETWORK_CONFIG, "no plugin name provided")
    if "/" in name or name in (".", ".."):
        raise CniError(INVALID_NETWORK_CONFIG, f"invalid plugin name: {name}")
    dirs = cni_path.split(":")
    for directory in dirs:
        if not directory:
            continue
        candidate = join(directory, name)
        if is_file(candidate):
            return candidate
    raise CniError(INTERNAL, f'failed to find plugin "{name}" in path [{" ".join(dirs)}]')


def run_plugin(path: str, command: str, stdin: bytes, environ: Mapping[str, str]) -> PluginResult:
    """Run the plugin at ``path`` for ``command`` and wait for it."""
    env = dict(environ)
    env["CNI_COMMAND"] = command
    stdin_read, stdin_write = posix.pipe()
    stdout_read, stdout_write = posix.pipe()
    try:
        pid = posix.posix_spawn(
            path,
            [path],
            env,
            file_actions=[
                (posix.POSIX_SPAWN_DUP2, stdin_read, 0),
                (posix.POSIX_SPAWN_DUP2, stdout_write, 1),
            ],
            setsigdef=_RESET_SIGNALS,
        )
    except OSError as err:
        for fd in (stdin_read, stdin_write, stdout_read, stdout_write):
            posix.close(fd)
        raise CniError(INTERNAL, f"failed to run plugin {path}", str(err)) from None
    posix.close(stdin_read)
    posix.close(stdout_write)
    _feed(stdin_write, stdin)
    with open(stdout_read, "rb") as stream:
        stdout = stream.read()
    _, status = posix.waitpid(pid, 0)
    return PluginResult(posix.waitstatus_to_exitcode(status), stdout)


def _feed(fd: int, data: bytes) -> None:
    """Write ``data`` to the child's stdin; a child that stops reading is not our error."""
    try:
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view) :]
    except BrokenPipeError:
        pass
    finally:
        posix.close(fd)
