"""The userspace WireGuard driver: a supervised ``wireguard-go -f`` and its UAPI socket.

wireguard-go owns the TUN device ``flannel-wg``; when it dies the device,
its address and its routes go with it.  :meth:`WireguardGo.ensure_device`
runs on every reconcile pass: if the process is gone it starts a new one
(the caller then re-programs keys, every peer, address and route) and
says so.  The process is started through :mod:`backends.wgsandbox`, which
gives it a control-socket directory of its own (two nodes on one machine
never collide on ``/run/wireguard/flannel-wg.sock``); flanneld reaches the
socket through ``/proc/<pid>/root``.

wireguard-go outlives a flanneld restart (it runs in its own session): its
PID is kept in ``<state dir>/<ifname>.pid`` and the next flanneld adopts
it, so a restart does not interrupt pod traffic.  :func:`stop_recorded`
ends it by that PID (the lab's teardown and the tests use it).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable

from backends.wgsandbox import SOCKET_DIR
from backends.wireguard_state import DeviceState, PeerPlan
from backends.wireguard_uapi import UapiClient, UapiError, encode_set
from subnet.errors import ConfigError, DataplaneError

log = logging.getLogger(__name__)

BINARY = "wireguard-go"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
POLL = 0.05
INSTALL_HINT = (
    "install it (apt-get install --no-install-recommends wireguard-go) or load the kernel "
    "module (modprobe wireguard)"
)


def find_binary(name: str = BINARY) -> str:
    """The wireguard-go executable; ConfigError naming the fix when there is none."""
    path = shutil.which(name)
    if path is None:
        raise ConfigError(
            f"the kernel has no wireguard module and {name} is not installed: {INSTALL_HINT}"
        )
    return path


def pid_file(state_dir: str, ifname: str) -> str:
    return os.path.join(state_dir, f"{ifname}.pid")


def _cmdline(pid: int) -> list[str] | None:
    """``pid``'s argv; None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        if stat[stat.rindex(b")") + 2: stat.rindex(b")") + 3] in (b"Z", b"X"):
            return None
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except (OSError, ValueError):
        return None


def _is_wireguard_go(pid: int, ifname: str) -> bool:
    argv = _cmdline(pid)
    return bool(argv) and os.path.basename(argv[0]) == BINARY and argv[-1] == ifname  # type: ignore[index]


def recorded_pid(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def running_pid(state_dir: str, ifname: str) -> int | None:
    """The PID of the wireguard-go recorded in ``state_dir`` if it still runs."""
    pid = recorded_pid(pid_file(state_dir, ifname))
    return pid if pid is not None and _is_wireguard_go(pid, ifname) else None


def stop_recorded(state_dir: str, ifname: str, timeout: float = STOP_TIMEOUT) -> int | None:
    """End the wireguard-go recorded in ``state_dir`` (by its PID, after checking its argv).

    Returns the PID that was ended, or None when none was running.
    """
    path = pid_file(state_dir, ifname)
    pid = running_pid(state_dir, ifname)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_wireguard_go(pid, ifname):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(POLL)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return pid


def _netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class WireguardGo:
    """The userspace driver for one device.

    ``netns`` is a network namespace path to run wireguard-go in (tests);
    None runs it in flanneld's own namespace.
    """

    name = "userspace"

    def __init__(
        self,
        ifname: str,
        state_dir: str,
        binary: str,
        netns: str | None = None,
        python: str = sys.executable,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ifname = ifname
        self._state_dir = state_dir
        self._binary = binary
        self._netns = netns
        self._python = python
        self._clock = clock
        self._pid: int | None = None
        self._exit: str = ""
        self._adopt_tried = False

    @property
    def pid(self) -> int | None:
        return self._pid if self._alive() else None

    @property
    def socket_path(self) -> str:
        return f"/proc/{self._pid}/root{SOCKET_DIR}/{self._ifname}.sock"

    def ensure_device(self) -> bool:
        """wireguard-go running with its socket up; True when a new one had to be started."""
        if self._alive():
            if UapiClient(self.socket_path).listening():
                return False
            self._end_dying()
        if not self._adopt_tried:
            self._adopt_tried = True
            if self._adopt():
                return False
        elif self._pid is not None:
            log.warning(
                "wireguard-go (pid %d) for %s is gone (%s); restarting it and re-programming "
                "every peer", self._pid, self._ifname, self._exit_text(),
            )
        self._start()
        return True

    def read(self) -> DeviceState:
        return self._client().get()

    def apply(self, plan: PeerPlan, private_key: bytes, listen_port: int) -> None:
        """Send ``plan`` as one ``set`` request (the request holds the key: never logged)."""
        self._client().set(encode_set(plan, private_key, listen_port))

    def close(self) -> None:
        """Leave wireguard-go running for the next flanneld."""

    # --- internals ----------------------------------------------------------------------

    def _client(self) -> UapiClient:
        if self._pid is None:
            raise DataplaneError(f"wireguard-go for {self._ifname} is not running")
        return UapiClient(self.socket_path)

    def _end_dying(self) -> None:
        """End our wireguard-go that still runs but no longer listens, and wait until it is gone.

        A killed wireguard-go closes its TUN device and its socket before it can be reaped,
        so for a moment it looks alive with no device: restarting it needs it gone first.
        """
        pid = self._pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)  # ours, by the PID we started or adopted
        except ProcessLookupError:
            pass
        deadline = self._clock() + START_TIMEOUT
        while self._alive():
            if self._clock() > deadline:
                raise DataplaneError(f"wireguard-go (pid {pid}) for {self._ifname} does not end")
            time.sleep(POLL)

    def _alive(self) -> bool:
        """Whether wireguard-go still runs (our child is reaped here when it has exited)."""
        if self._pid is None:
            return False
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:  # adopted from an earlier flanneld: not our child
            return _is_wireguard_go(self._pid, self._ifname)
        if pid == 0:
            return True
        self._exit = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                      else f"exit code {os.waitstatus_to_exitcode(status)}")
        return False

    def _exit_text(self) -> str:
        return self._exit or "exited"

    def _same_netns(self, pid: int) -> bool:
        ours = _netns_inode(self._netns or "/proc/thread-self/ns/net")
        return ours is not None and _netns_inode(f"/proc/{pid}/ns/net") == ours

    def _adopt(self) -> bool:
        """Take over the wireguard-go a previous flanneld left running, if it serves our device."""
        pid = recorded_pid(pid_file(self._state_dir, self._ifname))
        if pid is None or not _is_wireguard_go(pid, self._ifname) or not self._same_netns(pid):
            return False
        self._pid = pid
        try:
            self._client().get()
        except UapiError as err:
            log.warning("wireguard-go pid %d does not answer on its socket (%s); "
                        "starting a new one", pid, err)
            self._pid = None
            return False
        log.info("adopted the running wireguard-go (pid %d) for %s", pid, self._ifname)
        return True

    def _start(self) -> None:
        argv = [self._python, "-m", "backends.wgsandbox"]
        if self._netns is not None:
            argv += ["--netns", self._netns]
        argv += ["--", self._binary, "-f", self._ifname]
        self._exit = ""
        try:
            # its own session: it outlives this flanneld, so a restart keeps traffic flowing
            pid = os.posix_spawn(
                self._python, argv, {**os.environ, "WG_PROCESS_FOREGROUND": "1"},
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
                setsid=True,
            )
        except OSError as err:
            raise DataplaneError(f"cannot start {self._binary}: {err}", err.errno) from err
        self._pid = pid
        self._wait_for_socket(pid)
        os.makedirs(self._state_dir, mode=0o755, exist_ok=True)
        with open(pid_file(self._state_dir, self._ifname), "w", encoding="ascii") as fh:
            fh.write(f"{pid}\n")
        log.info("started wireguard-go (pid %d) for %s", pid, self._ifname)

    def _wait_for_socket(self, pid: int) -> None:
        deadline = self._clock() + START_TIMEOUT
        while True:
            if not self._alive():
                self._pid = None
                raise DataplaneError(
                    f"{self._binary} for {self._ifname} exited at start ({self._exit_text()}); "
                    "see its messages above"
                )
            try:
                UapiClient(self.socket_path).get()
                return
            except UapiError:
                pass
            if self._clock() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                self._pid = None
                raise DataplaneError(
                    f"{self._binary} for {self._ifname} opened no control socket within "
                    f"{START_TIMEOUT:.0f}s"
                )
            time.sleep(POLL)
