"""The one fake SubnetManager, for the backend namespace tests and the throughput benchmark.

It lives here, not in ``tests/``, because a benchmark never imports the test
suite, while the tests may import from ``bench/`` (``bench.fakes``).  Nothing
shipped imports either (``tests/unit/test_import_contracts.py``), so this
stays out of the product.
"""

from __future__ import annotations

import ipaddress
import threading

from subnet.lease import Lease, LeaseAttrs
from subnet.manager import Sink, Snapshot, StoreReport, ignore_store_report
from subnet.netconf import NetConfig


class FakeSubnetManager:
    """A SubnetManager that hands out one fixed lease and remembers what it was asked.

    Its watch reports the lease it handed out and ``peers``, then waits for stop.
    """

    def __init__(
        self, config: NetConfig, subnet: str | None, ipv6_subnet: str | None = None,
        peers: tuple[Lease, ...] = (),
    ) -> None:
        self._config = config
        self._subnet = ipaddress.IPv4Network(subnet) if subnet else None
        self._ipv6_subnet = ipaddress.IPv6Network(ipv6_subnet) if ipv6_subnet else None
        self._peers = peers
        self._leases: list[Lease] = []
        self.acquired: list[LeaseAttrs] = []
        self.marked_available = threading.Event()

    def get_network_config(self) -> NetConfig:
        return self._config

    def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        self.acquired.append(attrs)
        lease = Lease(self._subnet, self._ipv6_subnet, attrs)
        self._leases.append(lease)
        return lease

    def renew_lease(self, lease: Lease) -> Lease:
        return lease

    def previous_attrs(self, public_ip: ipaddress.IPv4Address | None) -> LeaseAttrs | None:
        return None

    def public_ip_override(self) -> ipaddress.IPv4Address | None:
        return None

    def public_ipv6_override(self) -> ipaddress.IPv6Address | None:
        return None

    def mark_network_available(self) -> None:
        self.marked_available.set()

    def close(self) -> None:
        pass

    def watch_leases(
        self, sink: Sink, stop: threading.Event, report: StoreReport = ignore_store_report
    ) -> None:
        sink(Snapshot(tuple(self._leases[-1:]) + self._peers))
        stop.wait()
