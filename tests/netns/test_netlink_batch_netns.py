"""Batched writes and kernel-filtered dumps of the netlink seam, in a fresh namespace."""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import netns as pyroute2_netns

from backends import rtnl
from backends.base import KernelProbe
from backends.model import DataplaneState, FdbEntry, KernelObject, Neighbour, Route
from backends.netlink import Netlink, Rtnl, open_rtnl_socket
from backends.plan import Change, Delete, Put, plan

pytestmark = pytest.mark.netns

PEERS = 600  # 1800 objects: many sends' worth of requests
GW_BASE = int(ipaddress.IPv4Address("10.200.0.0"))


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True,
                          text=True).stdout


def ip_json(ns: str, *args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-j", "-n", ns, *args], check=True, capture_output=True,
                         text=True).stdout
    return list(json.loads(out or "[]"))


def bridge_json(ns: str, *args: str) -> list[dict[str, object]]:
    out = subprocess.run(["bridge", "-j", "-n", ns, *args], check=True, capture_output=True,
                         text=True).stdout
    return list(json.loads(out or "[]"))


@pytest.fixture
def node(netns_factory: Callable[[str], str]) -> Iterator[tuple[str, Netlink, int]]:
    """A namespace with an underlay veth and two VXLAN devices (ours and a foreign one)."""
    ns = netns_factory("nlb")
    ip(ns, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1")
    ip(ns, "addr", "add", "198.18.0.1/16", "dev", "ul0")
    for dev, vni in (("vx-ours", 1), ("vx-other", 2)):
        ip(ns, "link", "add", dev, "type", "vxlan", "id", str(vni), "dev", "ul0",
           "local", "198.18.0.1", "dstport", "8472", "nolearning")
    for dev in ("ul0", "ul1", "vx-ours", "vx-other"):
        ip(ns, "link", "set", dev, "up")
    with Netlink(ns) as netlink:
        ours = netlink.link("vx-ours")
        assert ours is not None
        yield ns, netlink, ours.index


def peer_objects(count: int, dev: int) -> list[KernelObject]:
    objects: list[KernelObject] = []
    for i in range(count):
        gateway = ipaddress.IPv4Address(GW_BASE + 256 * i)
        mac = f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}"
        public = ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.1.0")) + i)
        objects += [
            Neighbour(dev, gateway, mac),
            FdbEntry(dev, mac, public),
            Route(ipaddress.IPv4Network(f"{gateway}/24"), gateway, dev, onlink=True),
        ]
    return objects


def test_batched_apply_programs_every_object_and_a_second_pass_writes_nothing(
    node: tuple[str, Netlink, int],
) -> None:
    ns, netlink, dev = node
    desired = DataplaneState.of(peer_objects(PEERS, dev))
    result = netlink.sync(desired, [dev], [2])
    assert not result.failed and len(result.applied) == 3 * PEERS
    routes = ip_json(ns, "route", "show", "proto", "44")
    assert len(routes) == PEERS
    assert all(r["dev"] == "vx-ours" and "onlink" in r["flags"] for r in routes)  # type: ignore[operator]
    neighbours = [n for n in ip_json(ns, "neigh", "show", "dev", "vx-ours")
                  if "PERMANENT" in n.get("state", ())]  # type: ignore[operator]
    assert len(neighbours) == PEERS
    fdb = [e for e in bridge_json(ns, "fdb", "show", "dev", "vx-ours") if e.get("dst")]
    assert len(fdb) == PEERS
    assert netlink.observe([dev], [2]) == desired
    assert netlink.sync(desired, [dev], [2]).applied == ()


def test_a_fresh_sync_reads_the_kernel_once_and_a_cold_one_computes_no_signatures(
    node: tuple[str, Netlink, int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns, netlink, dev = node
    objects = peer_objects(PEERS, dev)
    desired = DataplaneState.of(objects)
    dumps: list[int] = []
    signatures: list[KernelObject] = []
    real_dump, real_signature = Rtnl.dump, rtnl.signature

    def dump(self: Rtnl, kind: int, body: bytes, decode: Callable[[bytes], object]) -> object:
        if kind in (rtnl.RTM_GETROUTE, rtnl.RTM_GETNEIGH):  # not the link dump for names
            dumps.append(kind)
        return real_dump(self, kind, body, decode)

    def signature(obj: KernelObject) -> rtnl.Signature:
        signatures.append(obj)
        return real_signature(obj)

    monkeypatch.setattr(Rtnl, "dump", dump)
    monkeypatch.setattr(rtnl, "signature", signature)
    assert len(netlink.sync(desired, [dev], [2]).applied) == 3 * PEERS
    # one route, one neighbour and one FDB dump; nothing of ours there: no signature
    assert len(dumps) == 3 and signatures == []
    # hand-made damage: a route gone, a foreign route with our protocol id
    ip(ns, "route", "del", "10.200.0.0/24")
    ip(ns, "route", "add", "10.99.0.0/24", "via", "198.18.0.2", "proto", "44")
    dumps.clear()
    repair = netlink.sync(desired, [dev], [2])
    assert len(dumps) == 3 and not repair.failed
    assert {(type(c).__name__, c.obj) for c in repair.applied} == {
        ("Put", objects[2]),
        ("Delete", Route(ipaddress.IPv4Network("10.99.0.0/24"),
                         ipaddress.IPv4Address("198.18.0.2"), netlink.link("ul0").index)),  # type: ignore[union-attr]
    }
    assert netlink.observe([dev], [2]) == desired


def test_the_full_pass_and_the_probe_share_one_signature_set(
    node: tuple[str, Netlink, int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, netlink, dev = node
    desired = DataplaneState.of(peer_objects(PEERS, dev))
    assert not netlink.sync(desired, [dev], [2]).failed
    signed: list[KernelObject] = []
    real_signature = rtnl.signature

    def signature(obj: KernelObject) -> rtnl.Signature:
        signed.append(obj)
        return real_signature(obj)

    monkeypatch.setattr(rtnl, "signature", signature)
    assert netlink.sync(desired, [dev], [2]).applied == ()  # the periodic pass: signs once
    assert len(signed) == 3 * PEERS
    read = netlink.begin_probe()
    assert read is not None
    probe = read_in_thread(read)
    assert isinstance(probe, KernelProbe)
    assert netlink.repairs(probe, [dev], [2]) == []
    assert netlink.sync(desired, [dev], [2]).applied == ()
    assert len(signed) == 3 * PEERS  # neither the probe nor the next pass signed again


def socket_in(ns: str, make: Callable[[], socket.socket]) -> socket.socket:
    """A socket that ``make`` opens inside namespace ``ns`` (on a thread that enters it)."""
    made: list[socket.socket] = []
    opener = threading.Thread(target=lambda: (pyroute2_netns.setns(ns, flags=0),
                                              made.append(make())))
    opener.start()
    opener.join(10)
    (sock,) = made
    return sock


def test_the_dump_reads_only_our_objects(node: tuple[str, Netlink, int]) -> None:
    ns, netlink, dev = node
    mine = peer_objects(3, dev)
    netlink.apply([Put(o) for o in mine])
    # foreign objects: another protocol, another device, another VXLAN device
    ip(ns, "route", "add", "10.99.0.0/24", "via", "198.18.0.2", "proto", "static")
    ip(ns, "route", "add", "10.99.1.0/24", "via", "198.18.0.2", "proto", "44", "table", "100")
    ip(ns, "neigh", "add", "198.18.0.9", "lladdr", "0e:00:00:00:99:99", "dev", "ul0",
       "nud", "permanent")
    ip(ns, "neigh", "add", "10.98.0.0", "lladdr", "0e:00:00:00:98:98", "dev", "vx-other",
       "nud", "permanent")
    subprocess.run(["bridge", "-n", ns, "fdb", "append", "0e:00:00:00:98:98", "dev", "vx-other",
                    "dst", "198.18.0.98", "self", "permanent"], check=True)
    assert netlink.observe([dev], [2]) == DataplaneState.of(mine)

    # The kernel itself filtered: every raw reply of our dumps belongs to us.
    raw = Rtnl(socket_in(ns, open_rtnl_socket))
    try:
        routes = raw.dump(rtnl.RTM_GETROUTE, rtnl.route_dump(2), lambda p: p)
        assert routes and all(p[5] == 44 and p[4] == 254 for p in routes)
        neighbours = raw.dump(rtnl.RTM_GETNEIGH, rtnl.neighbour_dump(2, dev), lambda p: p)
        assert neighbours and {rtnl.NDMSG.unpack_from(p)[3] for p in neighbours} == {dev}
        fdb = raw.dump(rtnl.RTM_GETNEIGH, rtnl.fdb_dump(dev), lambda p: p)
        assert fdb and {rtnl.NDMSG.unpack_from(p)[3] for p in fdb} == {dev}
    finally:
        raw.close()


def test_a_partly_failed_batch_reports_each_object_and_retries_only_what_failed(
    node: tuple[str, Netlink, int],
) -> None:
    ns, netlink, dev = node
    good = peer_objects(50, dev)
    gw = ipaddress.IPv4Address("10.201.0.0")
    unreachable = Route(ipaddress.IPv4Network("10.201.0.0/24"), gw, dev, onlink=False)
    missing_dev = Neighbour(99999, ipaddress.IPv4Address("10.202.0.0"), "0e:00:00:00:aa:aa")
    desired = DataplaneState.of([*good, unreachable])
    first = netlink.sync(desired, [dev], [2])
    assert [(f.change.obj, f.errno) for f in first.failed] == [(unreachable, errno.ENETUNREACH)]
    assert len(first.applied) == len(good)
    again = netlink.sync(desired, [dev], [2], fresh=False)
    assert again.applied == () and [f.change.obj for f in again.failed] == [unreachable]
    batch = netlink.apply([Put(missing_dev), *plan(DataplaneState(), DataplaneState.of(good))])
    assert [(f.change.obj, f.errno) for f in batch.failed] == [(missing_dev, errno.ENODEV)]
    assert len(batch.applied) == len(good)
    assert len(ip_json(ns, "route", "show", "proto", "44")) == 50


def read_in_thread(read: Callable[[], object]) -> object:
    """Run a probe's read on a thread of its own, as the main loop does."""
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.append(read()))
    worker.start()
    worker.join(60)
    assert got, "the read did not finish"
    return got[0]


def test_a_kernel_read_off_the_loop_thread_confirms_an_intact_kernel(
    node: tuple[str, Netlink, int],
) -> None:
    _, netlink, dev = node
    desired = DataplaneState.of(peer_objects(PEERS, dev))
    assert not netlink.sync(desired, [dev], [2]).failed
    read = netlink.begin_probe()
    assert read is not None
    probe = read_in_thread(read)
    assert isinstance(probe, KernelProbe)
    assert netlink.repairs(probe, [dev], [2]) == []
    assert netlink.repairs(probe, [dev], [2]) is None  # one probe checks one pass


def test_writes_made_while_the_kernel_is_read_are_not_taken_for_damage(
    node: tuple[str, Netlink, int],
) -> None:
    _, netlink, dev = node
    objects = peer_objects(PEERS + 2, dev)
    first, added, changed = objects[:-6], objects[-6:-3], objects[-3:]
    assert not netlink.sync(DataplaneState.of(first), [dev], [2]).failed
    for write_before_read in (True, False):  # the read sees the writes, or does not
        read = netlink.begin_probe()
        assert read is not None
        if write_before_read:
            netlink.sync_delta([], added, [dev], [2])
        probe = read_in_thread(read)
        if not write_before_read:
            netlink.sync_delta(added, changed, [dev], [2])
        assert isinstance(probe, KernelProbe)
        assert netlink.repairs(probe, [dev], [2]) == []


def test_damage_found_by_the_read_is_repaired_object_by_object(
    node: tuple[str, Netlink, int],
) -> None:
    ns, netlink, dev = node
    objects = peer_objects(PEERS, dev)
    desired = DataplaneState.of(objects)
    assert not netlink.sync(desired, [dev], [2]).failed
    foreign = "10.99.0.0"  # a route of ours nobody wanted, and a changed neighbour
    changed_mac = "0e:00:00:00:99:99"
    ip(ns, "route", "del", "10.200.0.0/24")
    ip(ns, "route", "add", f"{foreign}/24", "via", "198.18.0.2", "proto", "44")
    ip(ns, "neigh", "replace", "10.200.1.0", "lladdr", changed_mac, "dev", "vx-ours",
       "nud", "permanent")
    for round_ in range(2):
        read = netlink.begin_probe()
        assert read is not None
        probe = read_in_thread(read)
        assert isinstance(probe, KernelProbe)
        if round_ == 0:
            repairs = netlink.repairs(probe, [dev], [2])
            assert repairs is not None
            assert {(type(c).__name__, c.obj) for c in repairs} == {
                ("Delete", Route(ipaddress.IPv4Network(f"{foreign}/24"),
                                 ipaddress.IPv4Address("198.18.0.2"), netlink.link("ul0").index)),  # type: ignore[union-attr]
                ("Put", objects[2]), ("Put", objects[3]),
            }
            continue
        # the full pass, with the probe: repairs only those objects
        result = netlink.sync_changes([], [], lambda: desired, [dev], [2], fresh=True,
                                      probe=probe)
        assert len(result.applied) == 3 and not result.failed
        assert netlink.observe([dev], [2]) == desired


def test_a_failed_write_keeps_the_read_from_vouching_for_the_kernel(
    node: tuple[str, Netlink, int],
) -> None:
    _, netlink, dev = node
    good = peer_objects(5, dev)
    unreachable = Route(ipaddress.IPv4Network("10.201.0.0/24"), ipaddress.IPv4Address("10.201.0.0"),
                        dev)
    assert not netlink.sync(DataplaneState.of(good), [dev], [2]).failed
    read = netlink.begin_probe()
    assert read is not None
    assert netlink.sync_delta([], [unreachable], [dev], [2]).failed  # type: ignore[union-attr]
    probe = read_in_thread(read)
    assert isinstance(probe, KernelProbe)
    assert netlink.repairs(probe, [dev], [2]) is None
    assert netlink.begin_probe() is None  # until a full pass succeeds again


class WatchedSocket:
    """A netlink socket that counts the ENOBUFS and the timeouts its reader meets."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.overruns = 0
        self.timeouts = 0

    def send(self, data: bytes, /) -> int:
        return self._sock.send(data)

    def recv(self, size: int, /) -> bytes:
        try:
            return self._sock.recv(size)
        except TimeoutError:
            self.timeouts += 1
            raise
        except OSError as err:
            self.overruns += err.errno == errno.ENOBUFS
            raise

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def settimeout(self, value: float | None, /) -> None:
        self._sock.settimeout(value)

    def close(self) -> None:
        self._sock.close()


def test_a_small_receive_buffer_loses_answers_but_never_reports_a_failed_object_as_done(
    node: tuple[str, Netlink, int],
) -> None:
    ns, netlink, _ = node
    uplink = netlink.link("ul0")
    assert uplink is not None
    gateway = ipaddress.IPv4Address("198.18.0.2")
    changes: list[Change] = []
    good: list[Change] = []
    failing: list[Change] = []
    for i in range(2400):
        good.append(Put(Route(ipaddress.IPv4Network(f"10.{100 + i // 250}.{i % 250}.0/24"),
                              gateway, uplink.index)))
        changes.append(good[-1])
        if i % 8 == 0:  # a route through a device that does not exist; one not there
            failing += [
                Put(Route(ipaddress.IPv4Network(f"10.{200 + i // 250}.{i % 250}.0/24"), gateway,
                          99999)),
                Delete(Route(ipaddress.IPv4Network(f"10.{50 + i // 250}.{i % 250}.0/24"), gateway,
                             uplink.index)),
            ]
            changes += failing[-2:]

    def small() -> socket.socket:
        sock = open_rtnl_socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)  # ~80 answers
        sock.settimeout(2.0)  # a wait for answers that never come fails soon
        return sock

    sock = WatchedSocket(socket_in(ns, small))
    try:
        codes = Rtnl(sock).transact(changes, rtnl.change_body)
    finally:
        sock.close()
    outcome = dict(zip(changes, codes, strict=True))
    assert sock.overruns > 0  # answers were lost
    assert sock.timeouts == 0  # and each send after a loss was answered
    assert all(outcome[change] != 0 for change in failing)
    assert {outcome[c] for c in failing if isinstance(c, Delete)} == {errno.ESRCH}
    done = {c.obj.dst for c in good if outcome[c] == 0}
    assert done <= {ipaddress.IPv4Network(r["dst"])  # type: ignore[arg-type]
                    for r in ip_json(ns, "route", "show", "proto", "44")}
    assert len(done) == len(good)  # what was lost was sent again until known
