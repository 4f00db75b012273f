"""subnet.env: what flanneld tells the CNI plugin (and Docker, systemd units) about this node.

The format is upstream's byte for byte: plain ``KEY=VALUE`` lines, no
quoting, in this order, each family's pair only when that family is
enabled::

    FLANNEL_NETWORK=10.244.0.0/16
    FLANNEL_SUBNET=10.244.1.1/24
    FLANNEL_IPV6_NETWORK=2001:cafe:42::/56
    FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=true

The subnet lines carry the first host address (network + 1) with the lease's
prefix length.  On restart the previous subnets are read back so etcd mode
can ask for the same ones again.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from subnet.lease import IPNetwork, Lease
from subnet.netconf import NetConfig

log = logging.getLogger(__name__)

FILE_MODE = 0o644
DIR_MODE = 0o755

_N = TypeVar("_N", ipaddress.IPv4Network, ipaddress.IPv6Network)


def _first_host(subnet: IPNetwork) -> str:
    return f"{subnet.network_address + 1}/{subnet.prefixlen}"


def render_subnet_env(config: NetConfig, lease: Lease, mtu: int, ip_masq: bool) -> str:
    """The file's text for our lease under ``config``.

    A family's two lines appear when the config enables it and both the
    network and our subnet of that family exist.
    """
    lines = []
    if config.enable_ipv4 and config.network is not None and lease.subnet is not None:
        lines.append(f"FLANNEL_NETWORK={config.network}")
        lines.append(f"FLANNEL_SUBNET={_first_host(lease.subnet)}")
    if config.enable_ipv6 and config.ipv6_network is not None and lease.ipv6_subnet is not None:
        lines.append(f"FLANNEL_IPV6_NETWORK={config.ipv6_network}")
        lines.append(f"FLANNEL_IPV6_SUBNET={_first_host(lease.ipv6_subnet)}")
    lines.append(f"FLANNEL_MTU={mtu}")
    lines.append(f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}")
    return "".join(line + "\n" for line in lines)


def _make_dirs(directory: Path) -> None:
    """Create missing parents with mode 0755 whatever the umask; leave existing ones alone."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # created concurrently
        os.chmod(path, DIR_MODE)


def write_subnet_env(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` atomically with ``text`` (mode 0644); raises OSError on failure.

    Temp file in the same directory, fsync, rename over the target, fsync the
    directory: readers see the old file or the new one, never a partial one.
    """
    # tempfile brings shutil, bz2 and lzma: imported here, on the start's announce thread
    # (beside the first pass), not with the module on the way to it
    import tempfile

    target = Path(path)
    directory = target.parent
    _make_dirs(directory)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fchmod(tmp.fileno(), FILE_MODE)
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _read_env(path: Path) -> dict[str, str] | None:
    """KEY=VALUE pairs (dotenv-style: comments, ``export``, quotes); None if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        log.info("No previous subnet file at %s", path)
        return None
    except (OSError, UnicodeDecodeError) as err:
        log.warning("Cannot read previous subnet file %s: %s", path, err)
        return None
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ")
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = _unquote(value)
    return values


def _cidr(values: dict[str, str], key: str, kind: type[_N], path: Path) -> _N | None:
    text = values.get(key)
    if text is None:
        log.debug("No %s in %s", key, path)
        return None
    if "," in text:
        log.warning("Ignoring previous %s=%s in %s: more than one entry", key, text, path)
        return None
    try:
        if not re.fullmatch(r"[^/]+/[0-9]{1,3}", text):
            raise ValueError("not a CIDR (address/prefix-length)")
        network = kind(text, strict=False)
    except ValueError as err:
        log.warning("Ignoring previous %s=%r in %s: %s", key, text, path, err)
        return None
    return network


@dataclass(frozen=True, slots=True)
class PreviousRun:
    """What an earlier run wrote to subnet.env (each field None when absent or bad)."""

    network: ipaddress.IPv4Network | None = None
    ipv6_network: ipaddress.IPv6Network | None = None
    subnet: ipaddress.IPv4Network | None = None
    ipv6_subnet: ipaddress.IPv6Network | None = None

    @property
    def subnets(self) -> tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None]:
        """(FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET): etcd mode asks for them again."""
        return self.subnet, self.ipv6_subnet

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None]:
        """(FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK): masquerade removes rules built on them."""
        return self.network, self.ipv6_network


def read_previous_run(path: str | os.PathLike[str]) -> PreviousRun:
    """subnet.env of an earlier run, subnets masked to their network.

    Anything missing, unparsable, of the wrong family or listing several
    entries gives None for that field (logged); a missing file gives all None.
    """
    source = Path(path)
    values = _read_env(source)
    if values is None:
        return PreviousRun()
    return PreviousRun(
        network=_cidr(values, "FLANNEL_NETWORK", ipaddress.IPv4Network, source),
        ipv6_network=_cidr(values, "FLANNEL_IPV6_NETWORK", ipaddress.IPv6Network, source),
        subnet=_cidr(values, "FLANNEL_SUBNET", ipaddress.IPv4Network, source),
        ipv6_subnet=_cidr(values, "FLANNEL_IPV6_SUBNET", ipaddress.IPv6Network, source),
    )
