"""Per-container cache of rendered delegate configs in ``dataDir``.

ADD stores the exact bytes sent to the delegate before invoking it, so that
DEL can replay them even after subnet.env changed or vanished. The directory
is created 0700 and each file is written 0600, atomically (temporary file,
then rename): a reader sees the old file or the new one, never a part.
Container IDs are checked against the CNI spec's character set before they
become file names, so no path can leave the directory.

Nothing is fsynced, as upstream's plugin, ``host-local`` and the runtime's
own result cache do not: the two fsyncs cost 1.5 ms of every ADD on a quiet
disk and up to 7 ms while other jobs write, and they would protect a file
only across a power loss, after which the pod's namespace is gone anyway.
A file that comes back empty or torn from one is handled by DEL like any
unreadable cache entry (a warning, success).
"""

from __future__ import annotations

import posix  # not os: see cni.files

from cni.errors import INVALID_ENVIRONMENT, IO_FAILURE, UNKNOWN_CONTAINER, CniError
from cni.files import UnreadableFile, join, read_regular
from cni.stdin_config import is_valid_name

# A cached config is the rendered delegate config: a few hundred bytes.
MAX_CACHED_CONFIG = 1024 * 1024
# NAME_MAX: a longer ID could not be a file name in the cache directory.
MAX_CONTAINER_ID = 255


def validate_container_id(container_id: str) -> str:
    """Return ``container_id`` if the spec allows it; otherwise raise CniError."""
    if not container_id:
        raise CniError(UNKNOWN_CONTAINER, "missing containerID")
    if len(container_id) > MAX_CONTAINER_ID:
        raise CniError(
            INVALID_ENVIRONMENT,
            "containerID is too long",
            f"CNI_CONTAINERID has {len(container_id)} characters, at most"
            f" {MAX_CONTAINER_ID} are allowed",
        )
    if not is_valid_name(container_id):
        raise CniError(INVALID_ENVIRONMENT, "invalid characters in containerID", container_id)
    return container_id


class ScratchCache:
    """Rendered delegate configs, one file per container ID."""

    __slots__ = ("data_dir",)

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir

    def path(self, container_id: str) -> str:
        return join(self.data_dir, validate_container_id(container_id))

    def _make_dir(self) -> None:
        try:  # the usual cases: the directory exists, or only it is missing
            posix.mkdir(self.data_dir, 0o700)
        except FileExistsError:
            return
        except OSError:  # a missing parent (or worse): os.makedirs creates or reports it
            import os

            os.makedirs(os.path.dirname(os.path.abspath(self.data_dir)), exist_ok=True)
            try:
                posix.mkdir(self.data_dir, 0o700)
            except FileExistsError:
                return
        posix.chmod(self.data_dir, 0o700)  # whatever the umask

    def save(self, container_id: str, data: bytes) -> None:
        """Store ``data`` for ``container_id``, replacing an older copy atomically."""
        final = self.path(container_id)
        temp = join(self.data_dir, f".tmp-{posix.getpid()}-{posix.urandom(4).hex()}")
        try:
            self._make_dir()
            fd = posix.open(
                temp,
                posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_CLOEXEC | posix.O_NOFOLLOW,
                0o600,
            )
            try:
                posix.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[posix.write(fd, view) :]
            finally:
                posix.close(fd)
            posix.rename(temp, final)
        except OSError as err:
            _unlink_quietly(temp)
            raise CniError(
                IO_FAILURE, f"failed to save delegate config for {container_id}", str(err)
            ) from None

    def load(self, container_id: str) -> bytes | None:
        """The cached config, or None if there is none."""
        try:
            return read_regular(self.path(container_id), MAX_CACHED_CONFIG, posix.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except (OSError, UnreadableFile) as err:
            raise CniError(
                IO_FAILURE, f"failed to read cached delegate config for {container_id}", str(err)
            ) from None

    def remove(self, container_id: str) -> None:
        """Forget ``container_id``; a missing file is fine (DEL is idempotent)."""
        try:
            posix.unlink(self.path(container_id))
        except FileNotFoundError:
            return
        except OSError as err:
            raise CniError(
                IO_FAILURE, f"failed to remove cached delegate config for {container_id}", str(err)
            ) from None


def _unlink_quietly(path: str) -> None:
    try:
        posix.unlink(path)
    except OSError:
        return
