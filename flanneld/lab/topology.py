"""Lab plumbing: named network namespaces, veth pairs, a bridge, addresses.

This is test and demo infrastructure, not the data plane: it builds the
"machines" flanneld runs on.  Every call names the namespace it works in
and opens its netlink socket there (``IPRoute(netns=..., flags=0)``, so a
typo raises instead of silently creating a namespace); nothing here ever
touches the root namespace.  pyroute2 errors are translated into
:class:`~subnet.errors.DataplaneError` at this seam.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pyroute2 import IPRoute, NetlinkError, netns

from subnet.errors import DataplaneError

IFA_F_NODAD = 0x02  # linux/if_addr.h: skip duplicate address detection

NETNS_DIR = "/var/run/netns"
NSENTER = "nsenter"

T = TypeVar("T")


def netns_path(name: str) -> str:
    """The bind-mount path of a named namespace (what CNI_NETNS wants)."""
    return os.path.join(NETNS_DIR, name)


def list_netns() -> list[str]:
    """Names of all named network namespaces."""
    return sorted(str(name) for name in netns.listnetns())


def create_netns(name: str) -> None:
    """Create a named namespace and bring its loopback up; error if it exists."""
    if name in list_netns():
        raise DataplaneError(f"network namespace {name} already exists")
    try:
        netns.create(name)
    except OSError as err:
        raise DataplaneError(f"cannot create network namespace {name}: {err}") from err
    set_up(name, "lo")


def delete_netns(name: str) -> bool:
    """Remove a named namespace; False if it did not exist.

    Devices inside go away with it once no process holds the namespace.
    """
    if name not in list_netns():
        return False
    try:
        netns.remove(name)
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False
        raise DataplaneError(f"cannot remove network namespace {name}: {err}") from err
    return True


def enter_netns(name: str) -> Callable[[], None]:
    """A ``preexec_fn`` that moves the child into namespace ``name``.

    Only the network namespace changes; the file system stays shared, so
    the child sees the same paths (state dir, subnet files) as we do.
    """
    path = netns_path(name)

    def enter() -> None:
        netns.setns(path, flags=0, fork=False)

    return enter


def netns_argv(name: str, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed so that it runs in namespace ``name`` (util-linux nsenter).

    nsenter enters the namespace and execs ``argv`` in place, so the PID is
    the program's own; unlike a ``preexec_fn`` this is safe with threads.
    """
    return [NSENTER, f"--net={netns_path(name)}", "--", *argv]


def run_in_netns(name: str, func: Callable[[], T]) -> T:
    """Run ``func`` in a short-lived thread that has entered namespace ``name``.

    The network namespace is a per-thread attribute, so sockets (HTTP to an
    address that only exists in the lab) and ``/proc/sys/net`` writes made
    by ``func`` belong to ``name`` while the caller stays where it is.
    """
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            netns.setns(netns_path(name), flags=0, fork=False)
            outcome["value"] = func()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def write_sysctl(name: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl, e.g. ``net.ipv4.ip_forward``, inside ``name``."""
    path = "/proc/sys/" + key.replace(".", "/")

    def write() -> None:
        with open(path, "w", encoding="ascii") as fh:
            fh.write(value)

    try:
        run_in_netns(name, write)
    except OSError as err:
        raise DataplaneError(f"cannot set {key}={value} in {name}: {err}") from err


def read_sysctl(name: str, key: str) -> str:
    """Read a per-namespace sysctl inside ``name``."""
    path = "/proc/sys/" + key.replace(".", "/")

    def read() -> str:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()

    return run_in_netns(name, read)


def _ipr(name: str) -> IPRoute:
    # Checked here because a failed IPRoute(netns=...) leaks its event loop.
    if not os.path.exists(netns_path(name)):
        raise DataplaneError(f"no network namespace {name}")
    try:
        return IPRoute(netns=name, flags=0)
    except (OSError, NetlinkError) as err:
        raise DataplaneError(f"cannot open netlink in namespace {name}: {err}") from err


def _index(ipr: IPRoute, name: str, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise DataplaneError(f"no interface {ifname} in namespace {name}")
    return int(found[0])


def add_bridge(name: str, ifname: str, mtu: int = 1500) -> None:
    """Create bridge ``ifname`` in namespace ``name`` and bring it up."""
    with _ipr(name) as ipr:
        try:
            ipr.link("add", ifname=ifname, kind="bridge")
            ipr.link("set", index=_index(ipr, name, ifname), mtu=mtu, state="up")
        except NetlinkError as err:
            raise DataplaneError(f"cannot create bridge {ifname} in {name}: {err}") from err


def add_veth(
    name: str, ifname: str, peer_netns: str, peer_ifname: str, mtu: int = 1500
) -> None:
    """Create veth ``ifname`` in ``name`` whose peer ``peer_ifname`` lives in ``peer_netns``.

    Both ends get ``mtu``; neither is brought up here.
    """
    with _ipr(name) as ipr:
        try:
            ipr.link(
                "add",
                ifname=ifname,
                kind="veth",
                mtu=mtu,
                peer={"ifname": peer_ifname, "net_ns_fd": netns_path(peer_netns), "mtu": mtu},
            )
        except NetlinkError as err:
            raise DataplaneError(
                f"cannot create veth {ifname}@{name} <-> {peer_ifname}@{peer_netns}: {err}"
            ) from err


def set_master(name: str, ifname: str, bridge: str) -> None:
    """Enslave ``ifname`` to ``bridge`` and bring it up (both in ``name``)."""
    with _ipr(name) as ipr:
        try:
            ipr.link(
                "set",
                index=_index(ipr, name, ifname),
                master=_index(ipr, name, bridge),
                state="up",
            )
        except NetlinkError as err:
            raise DataplaneError(f"cannot attach {ifname} to {bridge} in {name}: {err}") from err


def add_address(
    name: str, ifname: str, interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
) -> None:
    """Add ``interface`` (address/prefix) to ``ifname``; an existing equal address is fine.

    An IPv6 address is added ``nodad``: usable at once, as the lab's addresses are unique.
    """
    flags = {"flags": IFA_F_NODAD} if interface.version == 6 else {}
    with _ipr(name) as ipr:
        try:
            ipr.addr(
                "add",
                index=_index(ipr, name, ifname),
                address=str(interface.ip),
                prefixlen=interface.network.prefixlen,
                **flags,
            )
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise DataplaneError(
                    f"cannot add {interface} to {ifname} in {name}: {err}"
                ) from err


def set_up(name: str, ifname: str) -> None:
    """Bring ``ifname`` in namespace ``name`` up."""
    with _ipr(name) as ipr:
        try:
            ipr.link("set", index=_index(ipr, name, ifname), state="up")
        except NetlinkError as err:
            raise DataplaneError(f"cannot bring {ifname} up in {name}: {err}") from err


def set_mtu(name: str, ifname: str, mtu: int) -> None:
    """Set the MTU of ``ifname`` in namespace ``name``."""
    with _ipr(name) as ipr:
        try:
            ipr.link("set", index=_index(ipr, name, ifname), mtu=mtu)
        except NetlinkError as err:
            raise DataplaneError(f"cannot set mtu {mtu} on {ifname} in {name}: {err}") from err


def add_route(name: str, dst: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address) -> None:
    """An IPv4 route to ``dst`` via ``gateway`` in namespace ``name`` (on-link somewhere)."""
    with _ipr(name) as ipr:
        try:
            ipr.route("add", dst=str(dst), gateway=str(gateway))
        except NetlinkError as err:
            raise DataplaneError(f"cannot add {dst} via {gateway} in {name}: {err}") from err


def add_default_route(name: str, gateway: ipaddress.IPv4Address) -> None:
    """A default IPv4 route via ``gateway`` in namespace ``name``."""
    add_route(name, ipaddress.IPv4Network("0.0.0.0/0"), gateway)


def veth_link(
    name: str,
    ifname: str,
    address: ipaddress.IPv4Interface | None,
    peer_netns: str,
    peer_ifname: str,
    peer_address: ipaddress.IPv4Interface | None,
    mtu: int = 1500,
) -> None:
    """A veth between two namespaces, each end addressed (where given) and up."""
    add_veth(name, ifname, peer_netns, peer_ifname, mtu)
    for ns, dev, addr in ((name, ifname, address), (peer_netns, peer_ifname, peer_address)):
        if addr is not None:
            add_address(ns, dev, addr)
        set_up(ns, dev)


def bridge_port(
    bridge_netns: str,
    bridge: str,
    port: str,
    name: str,
    ifname: str,
    address: ipaddress.IPv4Interface,
    mtu: int = 1500,
) -> None:
    """Plug namespace ``name`` into ``bridge``: a veth whose ``port`` end is enslaved
    to the bridge and whose ``ifname`` end carries ``address``; both up."""
    add_veth(bridge_netns, port, name, ifname, mtu)
    set_master(bridge_netns, port, bridge)
    add_address(name, ifname, address)
    set_up(name, ifname)


def link_index(name: str, ifname: str) -> int:
    """The interface index of ``ifname`` in namespace ``name``."""
    with _ipr(name) as ipr:
        return _index(ipr, name, ifname)


def link_address(name: str, ifname: str) -> str | None:
    """The MAC address of ``ifname`` in ``name``, or None if there is no such link."""
    with _ipr(name) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        (link,) = ipr.get_links(found[0])
        mac = link.get("IFLA_ADDRESS")
        return str(mac) if mac else None


def global_ipv6_addresses(name: str, ifname: str) -> list[ipaddress.IPv6Interface]:
    """The non-link-local IPv6 addresses on ``ifname`` in ``name`` (empty if no such link)."""
    with _ipr(name) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return []
        addrs = [
            ipaddress.IPv6Interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
            for msg in ipr.get_addr(family=socket.AF_INET6, index=found[0])
        ]
        return [a for a in addrs if not a.ip.is_link_local]


def ipv4_addresses(name: str, ifname: str) -> list[ipaddress.IPv4Interface]:
    """The IPv4 addresses on ``ifname`` in ``name`` (empty if there is no such link)."""
    with _ipr(name) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return []
        return [
            ipaddress.IPv4Interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
            for msg in ipr.get_addr(family=socket.AF_INET, index=found[0])
        ]
