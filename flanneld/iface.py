"""External interface selection: which link carries inter-node traffic, and from which address.

:func:`select_interface` is pure: it decides from a snapshot of the links,
the default route's interface and a route-lookup function, following
upstream's order (IPv4):

1. without ``--iface``/``--iface-regex``/``--iface-can-reach``: the interface
   owning ``--public-ip`` if one is given, else the default route's;
2. otherwise each ``--iface`` (an IP: the interface carrying it; else a
   name), then each ``--iface-regex`` (addresses first, then names), then
   ``--iface-can-reach`` (the route lookup's interface and source); first
   hit wins.

IPv6 (dual stack, IPv6-only) follows the same order: ``--iface`` may be an
IPv6 address, ``--iface-regex`` is matched against IPv6 addresses too (in
dual stack an interface matches when the pattern matches one IPv4 and one
IPv6 address of it, as upstream), ``--iface-can-reach`` may be an IPv6
address.  The IPv6 address is then the one the flag named, else the
interface's best global address: never a link-local one, which no peer
accepts as an endpoint (upstream would advertise it and be unreachable).

Errors name what was tried and list the interfaces that exist, with every
address of the family and why one was not usable.
:func:`discover` gathers the snapshot through a netlink object and calls it.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from backends.base import ExternalInterface, InterfaceAddress, InterfaceInfo, RouteLookup
from backends.peers import unusable_ipv6
from subnet.errors import ConfigError, DataplaneError, InterfaceError
from subnet.lease import IPAddress
from subnet.netconf import IPStack

log = logging.getLogger(__name__)

_A = TypeVar("_A", ipaddress.IPv4Address, ipaddress.IPv6Address)
_DESCRIBE_MAX = 16  # interfaces listed in an error; nodes may have hundreds of veths
RouteLookupFn = Callable[[IPAddress], Sequence[RouteLookup]]


class NetlinkView(Protocol):
    """The three read-only kernel queries interface selection needs."""

    def interfaces(self) -> Sequence[InterfaceInfo]: ...

    def default_route_ifindex(self, family: int) -> int | None: ...

    def route_get(self, addr: IPAddress) -> Sequence[RouteLookup]: ...


class InterfaceFlags(Protocol):
    """The flags that steer selection (``flanneld.cli.Flags`` satisfies this)."""

    @property
    def iface(self) -> Sequence[str]: ...

    @property
    def iface_regex(self) -> Sequence[str]: ...

    @property
    def iface_can_reach(self) -> str: ...

    @property
    def public_ip(self) -> str: ...

    @property
    def public_ipv6(self) -> str: ...


# --- address choice (generic over the family) -------------------------------------------


def is_global_unicast(addr: IPAddress) -> bool:
    """Go's ``net.IP.IsGlobalUnicast`` (private ranges count; loopback/link-local don't)."""
    return not (
        addr.is_unspecified
        or addr.is_loopback
        or addr.is_multicast
        or addr.is_link_local
        or addr == ipaddress.IPv4Address("255.255.255.255")
    )


def usable_addresses(info: InterfaceInfo, version: int) -> list[InterfaceAddress]:
    """The interface's addresses of one family that selection may use, best first.

    Global (IPv4 also link-local) unicast and not deprecated; sorted global
    before link-local, permanent before dynamic, non-temporary before
    temporary, otherwise in kernel order.
    """
    candidates = [
        a for a in info.addresses if a.address.version == version and not _unusable(a)
    ]
    return sorted(candidates, key=lambda a: (a.address.is_link_local, not a.permanent, a.temporary))


def _unusable(entry: InterfaceAddress) -> str:
    """Why selection skips an address ('' if it may use it)."""
    addr = entry.address
    if entry.deprecated:
        return "deprecated"
    if addr.version == 6 and addr.is_link_local:
        return "link-local"
    if not (is_global_unicast(addr) or addr.is_link_local):
        return "not unicast" if not addr.is_loopback else "loopback"
    return ""


def choose_address(info: InterfaceInfo, version: int) -> IPAddress | None:
    """The address selection uses on ``info`` for one family, or None."""
    usable = usable_addresses(info, version)
    return usable[0].address if usable else None


# --- selection ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Match:
    """An interface a flag (or the default route) chose, and how it was chosen."""

    info: InterfaceInfo
    via: str
    # the address a flag named (None: choose the interface's best one)
    address: ipaddress.IPv4Address | None = None
    address6: ipaddress.IPv6Address | None = None


class _NoMatch(Exception):
    """One selection attempt failed; the text says why."""


def _describe(interfaces: Sequence[InterfaceInfo], version: int = 4) -> str:
    """Every interface with its addresses of ``version``, each unusable one with why."""
    if not interfaces:
        return "no interfaces at all"
    parts = []
    for info in interfaces[:_DESCRIBE_MAX]:
        found = []
        for entry in info.addresses:
            if entry.address.version == version:
                why = _unusable(entry)
                found.append(f"{entry.address} ({why})" if why else str(entry.address))
        state = "" if info.up else " down"
        parts.append(f"{info.name}{state} [{', '.join(found) or f'no IPv{version}'}]")
    if len(interfaces) > _DESCRIBE_MAX:
        parts.append(f"... and {len(interfaces) - _DESCRIBE_MAX} more")
    return "available: " + "; ".join(parts)


def _describe_stack(interfaces: Sequence[InterfaceInfo], stack: IPStack) -> str:
    if stack is IPStack.DUAL:
        return f"{_describe(interfaces, 4)}; IPv6 {_describe(interfaces, 6)}"
    return _describe(interfaces, 6 if stack is IPStack.IPV6 else 4)


def _parse_ip(text: str, what: str, kind: type[_A]) -> _A | None:
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"invalid {what} {text!r}: not an IP address") from None
    if not isinstance(addr, kind):
        raise ConfigError(f"invalid {what} {text!r}: not an IPv{kind(0).version} address")
    return addr


def _parse_public6(text: str) -> ipaddress.IPv6Address | None:
    """``--public-ipv6``: an IPv6 address another node can reach."""
    addr = _parse_ip(text, "--public-ipv6", ipaddress.IPv6Address)
    why = unusable_ipv6(addr)
    if why:
        raise ConfigError(f"invalid --public-ipv6: {why}")
    return addr


def _parse_target(text: str) -> IPAddress | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"invalid --iface-can-reach {text!r}: not an IP address") from None


def _owner_of(interfaces: Sequence[InterfaceInfo], addr: IPAddress) -> InterfaceInfo | None:
    for info in interfaces:
        if any(a.address == addr for a in info.addresses):
            return info
    return None


def _by_index(interfaces: Sequence[InterfaceInfo], index: int) -> InterfaceInfo | None:
    return next((info for info in interfaces if info.index == index), None)


def _by_iface_value(interfaces: Sequence[InterfaceInfo], value: str, stack: IPStack) -> _Match:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        info = next((i for i in interfaces if i.name == value), None)
        if info is None:
            raise _NoMatch(f"no interface named {value!r}") from None
        return _Match(info, f"--iface {value}")
    if addr.version == 6 and not stack.ipv6:
        raise _NoMatch(f"{value} is an IPv6 address; IPv4 selection needs an IPv4 address or a "
                       "name")
    if addr.version == 4 and not stack.ipv4:
        raise _NoMatch(f"{value} is an IPv4 address; an IPv6-only stack needs an IPv6 address "
                       "or a name")
    owner = _owner_of(interfaces, addr)
    if owner is None:
        raise _NoMatch(f"no interface with given IP found ({value} is on no interface)")
    if isinstance(addr, ipaddress.IPv4Address):
        return _Match(owner, f"--iface {value}", address=addr)
    return _Match(owner, f"--iface {value}", address6=addr)


def _regex_hit(info: InterfaceInfo, pattern: re.Pattern[str], version: int) -> IPAddress | None:
    return next((c.address for c in usable_addresses(info, version)
                 if pattern.search(str(c.address))), None)


def _by_regex(interfaces: Sequence[InterfaceInfo], pattern: re.Pattern[str], stack: IPStack,
              ) -> _Match:
    """Addresses first (every family the stack runs must match on one interface, as
    upstream's dual stack asks), then interface names."""
    via = f"--iface-regex {pattern.pattern}"
    for info in interfaces:
        hit4 = _regex_hit(info, pattern, 4) if stack.ipv4 else None
        hit6 = _regex_hit(info, pattern, 6) if stack.ipv6 else None
        if (hit4 is not None or not stack.ipv4) and (hit6 is not None or not stack.ipv6):
            return _Match(info, via,
                          address=hit4 if isinstance(hit4, ipaddress.IPv4Address) else None,
                          address6=hit6 if isinstance(hit6, ipaddress.IPv6Address) else None)
    for info in interfaces:
        if pattern.search(info.name):
            return _Match(info, via)
    if stack is IPStack.DUAL:
        raise _NoMatch("matches no interface with both an IPv4 and an IPv6 address, "
                       "and no interface name")
    raise _NoMatch("matches no interface address or name")


def _by_route(
    interfaces: Sequence[InterfaceInfo], target: IPAddress, route_lookup: RouteLookupFn
) -> _Match:
    try:
        found = route_lookup(target)
    except DataplaneError as err:
        raise _NoMatch(f"route lookup failed: {err}") from err
    if not found:
        raise _NoMatch(f"no route to {target}")
    route = found[0]
    info = _by_index(interfaces, route.ifindex)
    if info is None:
        raise _NoMatch(f"the route to {target} uses interface index {route.ifindex}, "
                       f"which is not in the interface list")
    src = route.prefsrc
    return _Match(info, f"--iface-can-reach {target}",
                  address=src if isinstance(src, ipaddress.IPv4Address) else None,
                  address6=src if isinstance(src, ipaddress.IPv6Address) else None)


def _explicit(
    interfaces: Sequence[InterfaceInfo],
    ifaces: Sequence[str],
    regexes: Sequence[re.Pattern[str]],
    can_reach: IPAddress | None,
    route_lookup: RouteLookupFn,
    stack: IPStack,
) -> _Match:
    attempts: list[tuple[str, Callable[[], _Match]]] = []
    for value in ifaces:
        attempts.append((f"--iface {value}",
                         functools.partial(_by_iface_value, interfaces, value, stack)))
    for pattern in regexes:
        attempts.append((f"--iface-regex {pattern.pattern}",
                         functools.partial(_by_regex, interfaces, pattern, stack)))
    if can_reach is not None:
        attempts.append((f"--iface-can-reach {can_reach}",
                         functools.partial(_by_route, interfaces, can_reach, route_lookup)))
    failures = []
    for label, attempt in attempts:
        try:
            return attempt()
        except _NoMatch as why:
            log.info("Could not find valid interface matching %s: %s", label, why)
            failures.append(f"{label}: {why}")
    raise InterfaceError(
        "failed to find interface to use that matches the interfaces and/or regexes provided ("
        + "; ".join(failures) + f"); {_describe_stack(interfaces, stack)}"
    )


def _implicit(
    interfaces: Sequence[InterfaceInfo],
    public_ip: IPAddress | None,
    default_ifindex: int | None,
    version: int = 4,
) -> _Match:
    """No selection flags: the owner of the public IP, else the default route's interface
    (IPv4's; IPv6's in an IPv6-only stack)."""
    v6 = "" if version == 4 else "v6"
    if public_ip is not None:
        owner = _owner_of(interfaces, public_ip)
        if owner is None:
            raise InterfaceError(
                f"no interface with given IP found: --public-ip{v6} {public_ip} is not configured "
                f"on any local interface (for a NAT address add --iface, or use the "
                f"public-ip{v6}-overwrite annotation); {_describe(interfaces, version)}"
            )
        address = public_ip if isinstance(public_ip, ipaddress.IPv4Address) else None
        return _Match(owner, f"--public-ip{v6} {public_ip}", address=address)
    route = "the default route" if version == 4 else "the IPv6 default route"
    if default_ifindex is None:
        raise InterfaceError(
            f"no IPv{version} default route, so no interface to pick; add a default route or "
            f"pass --iface, --iface-regex or --iface-can-reach; {_describe(interfaces, version)}"
        )
    info = _by_index(interfaces, default_ifindex)
    if info is None:
        raise InterfaceError(f"{route} uses interface index {default_ifindex}, which "
                             f"is not in the interface list; {_describe(interfaces, version)}")
    return _Match(info, route)


def _no_route(target: IPAddress) -> Sequence[RouteLookup]:
    return ()


def select_interface(
    interfaces: Sequence[InterfaceInfo],
    *,
    ifaces: Sequence[str] = (),
    iface_regexes: Sequence[str] = (),
    iface_can_reach: str = "",
    public_ip: str = "",
    public_ipv6: str = "",
    default_ifindex: int | None = None,
    route_lookup: RouteLookupFn = _no_route,
    default_ifindex6: int | None = None,
    stack: IPStack = IPStack.IPV4,
) -> ExternalInterface:
    """Pick the external interface the way upstream does; see the module doc.

    With an IPv6 ``stack`` the interface's IPv6 address is chosen too (without
    flags the interface comes from the IPv4 rules in dual stack, where the two
    default routes must share it; from ``--public-ipv6`` or the IPv6 default
    route ``default_ifindex6`` in an IPv6-only stack).
    ``default_ifindex`` is the IPv4 default route's interface; ``route_lookup``
    answers ``ip route get`` for ``--iface-can-reach`` (empty when unreachable;
    the first route counts) and may raise DataplaneError.  Raises ConfigError for malformed flag values and
    InterfaceError when nothing suitable exists.
    """
    public4 = _parse_ip(public_ip, "--public-ip", ipaddress.IPv4Address)
    public6 = _parse_public6(public_ipv6)
    target = _parse_target(iface_can_reach)
    try:
        regexes = [re.compile(r) for r in iface_regexes]
    except re.error as err:
        raise ConfigError(f"invalid --iface-regex {err.pattern!r}: {err}") from None

    if ifaces or regexes or target is not None:
        match = _explicit(interfaces, ifaces, regexes, target, route_lookup, stack)
        if stack is IPStack.DUAL and public6 is not None:
            _check_public6_owner(interfaces, match, public6)
    elif stack is IPStack.IPV6:
        match = _implicit(interfaces, public6, default_ifindex6, 6)
    else:
        match = _implicit(interfaces, public4, default_ifindex)
        if stack.ipv6 and public4 is None:
            _check_default6(interfaces, match.info, default_ifindex6)

    info = match.info
    addr6 = (match.address6 or _ipv6_address(interfaces, match)) if stack.ipv6 else None
    if not stack.ipv4:
        return _external(match, None, None, addr6, public6)
    addr = match.address
    if addr is None:
        chosen = choose_address(info, 4)
        if not isinstance(chosen, ipaddress.IPv4Address):
            raise InterfaceError(
                f"failed to find IPv4 address for interface {info.name} (chosen by {match.via}): "
                "it has no global or link-local IPv4 address that is not deprecated; "
                f"{_describe(interfaces)}"
            )
        addr = chosen
    return _external(match, addr, public4, addr6, public6)


def _check_public6_owner(interfaces: Sequence[InterfaceInfo], match: _Match,
                         public6: ipaddress.IPv6Address) -> None:
    """Dual stack: a --public-ipv6 that a local interface carries must be on the chosen one
    (upstream's rule; an address no interface has is a NAT address and fine)."""
    owner = _owner_of(interfaces, public6)
    if owner is not None and owner.index != match.info.index:
        raise InterfaceError(
            f"v6 interface {owner.name} must be the same with v4 interface {match.info.name}: "
            f"--public-ipv6 {public6} is on {owner.name}, but {match.via} chose "
            f"{match.info.name}"
        )


def _external(
    match: _Match,
    addr: ipaddress.IPv4Address | None,
    public4: ipaddress.IPv4Address | None,
    addr6: ipaddress.IPv6Address | None,
    public6: ipaddress.IPv6Address | None,
) -> ExternalInterface:
    info = match.info
    if info.mtu == 0:
        raise InterfaceError(f"failed to determine MTU for interface {info.name} ({addr or addr6})")
    if not info.up:
        log.warning("External interface %s is down", info.name)
    if addr is not None:
        log.info("Using interface with name %s and address %s (chosen by %s)", info.name, addr,
                 match.via)
    if public4 is not None:
        log.info("Using %s as external address", public4)
    if addr6 is not None:
        log.info("Using IPv6 address %s of interface %s (chosen by %s)", addr6, info.name,
                 match.via)
    if public6 is not None and addr6 is not None:
        log.info("Using %s as external IPv6 address", public6)
    return ExternalInterface(
        name=info.name, index=info.index, mtu=info.mtu,
        iface_addr=addr, ext_addr=public4 if public4 is not None else addr,
        iface_addr6=addr6, ext_addr6=public6 if public6 is not None else addr6,
    )


def _ipv6_address(interfaces: Sequence[InterfaceInfo], match: _Match) -> ipaddress.IPv6Address:
    chosen = choose_address(match.info, 6)
    if not isinstance(chosen, ipaddress.IPv6Address):
        raise InterfaceError(
            f"failed to find IPv6 address for interface {match.info.name} (chosen by "
            f"{match.via}): it has no global IPv6 address that is not deprecated (a link-local "
            f"one cannot be a peer's endpoint); {_describe(interfaces, 6)}"
        )
    return chosen


def _check_default6(
    interfaces: Sequence[InterfaceInfo], chosen: InterfaceInfo, default_ifindex6: int | None
) -> None:
    """Dual stack without flags: the IPv6 default route must use the IPv4 one's interface."""
    if default_ifindex6 is None:
        raise InterfaceError(
            "no IPv6 default route, so dual stack cannot check its interface; add one or pass "
            f"--iface, --iface-regex or --iface-can-reach; {_describe(interfaces, 6)}"
        )
    if default_ifindex6 != chosen.index:
        other = _by_index(interfaces, default_ifindex6)
        raise InterfaceError(
            f"dual stack needs the IPv4 and IPv6 default routes on the same interface: IPv4 uses "
            f"{chosen.name}, IPv6 uses {other.name if other else default_ifindex6}; pass --iface"
        )


def discover(
    netlink: NetlinkView, flags: InterfaceFlags, stack: IPStack = IPStack.IPV4
) -> ExternalInterface:
    """Read links and the default route(s) through ``netlink``, then :func:`select_interface`."""
    return select_interface(
        netlink.interfaces(),
        ifaces=flags.iface,
        iface_regexes=flags.iface_regex,
        iface_can_reach=flags.iface_can_reach,
        public_ip=flags.public_ip,
        public_ipv6=flags.public_ipv6,
        default_ifindex=netlink.default_route_ifindex(socket.AF_INET),
        route_lookup=netlink.route_get,
        default_ifindex6=netlink.default_route_ifindex(socket.AF_INET6) if stack.ipv6 else None,
        stack=stack,
    )
