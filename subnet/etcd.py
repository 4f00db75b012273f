"""The etcd subnet manager: one key per node lease under ``<prefix>/subnets/``.

Keys and values are upstream flanneld's byte for byte, so Go and Python
nodes can share one etcd (v3 API).  Where this manager deliberately differs
from upstream:

* a lost creation race is retried with a new choice instead of failing;
* the create transaction also refuses when any key with the same IPv4 part
  exists (a dual-stack key cannot shadow an IPv4-only one), and a new
  dual-stack key whose IPv6 subnet an older key holds (two nodes picked it at
  once: no key compare can see that) is deleted again and another one chosen;
* reservations (keys without an etcd lease) work as documented: the host
  whose PublicIP matches reuses them and they stay TTL-less;
* renewal revokes the previous etcd lease once the new one is attached;
* a CA file is used even without a client certificate, and TLS files that
  an ``http://`` endpoint ignores are warned about (upstream is silent);
* peers' leases carry no expiration (nothing consumes it, and looking it up
  costs one TimeToLive call per key); etcd deletes expired keys and the
  watch reports that as LeaseRemoved;
* a value that does not parse (or is over 64 KiB) is reported as
  LeaseRemoved, as a re-list sees it, and our own lease found so is written
  again;
* the list is read in pages at one revision and the gRPC receive limit is
  etcd's own send limit, so no value etcd accepts stops list or watch.

This is the only module that imports the etcd client (``pyetcd``); its
exceptions and gRPC's are translated to :mod:`subnet.errors` here.
"""

from __future__ import annotations

import logging
import posixpath
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import grpc
from pyetcd import exceptions as etcd_errors
from pyetcd.client import Endpoint, MultiEndpointEtcd3Client
from pyetcd.etcdrpc import AuthenticateRequest
from pyetcd.events import DeleteEvent

from subnet.errors import (
    ConfigError,
    LeaseConflictError,
    PeerDataError,
    StoreError,
    SubnetsExhaustedError,
    WatchExpiredError,
)
from subnet.etcd_state import (
    ClaimPrevious,
    Exhausted,
    ListedLease,
    Repair,
    Reuse,
    decide,
    held_by,
)
from subnet.keyrange import prefix_range_end
from subnet.lease import (
    Lease,
    LeaseAttrs,
    decode_attrs,
    encode_attrs,
    parse_canonical_key,
    subnet_key,
)
from subnet.manager import (
    LeaseAdded,
    LeaseMessage,
    LeaseRemoved,
    Sink,
    Snapshot,
    StoreReport,
    ignore_store_report,
)
from subnet.netconf import NetConfig, SubnetRange, parse_net_config, subnet_ranges
from subnet.retry import Backoff

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/coreos.com/network"
DEFAULT_PORT = 2379
LEASE_TTL = 86400  # seconds; upstream's fixed subnet lease TTL
CONFIG_NOT_FOUND = (
    "flannel config not found in etcd store. Did you create your config using etcdv3 API?"
)
STOP_POLL = 1.0  # seconds between checks of the stop event inside a watch (close() ends it at once)
FAILOVER_PAUSE = 1.0  # seconds a failed endpoint is skipped when there are others
# Longest pause between watch reconnects (and lost-race retries): after an
# etcd outage the watch resumes within this (+20% jitter) of etcd's return.
RETRY_MAX = 2.0
# gRPC's own reconnect backoff grows to 120 s; while it waits, every call fails
# at once.  Capped at 1 s, so a watch resumes soon after an etcd outage.
# etcd sends up to 2 GiB - 1 in one message (its gRPC send limit), and so
# much is what etcd's Go client accepts; gRPC's default of 4 MiB made three
# 1.4 MB lease values fail every list with RESOURCE_EXHAUSTED.
MAX_RECEIVE = 2**31 - 1
GRPC_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", MAX_RECEIVE),
)
# Keys per range request when listing leases: a page holds at most this many
# values, however many nodes there are (500 leases are about 125 KB; 5000 nodes
# list in 10 requests: each costs a round trip, about 2 ms on a loaded host).
LIST_PAGE = 500
# The start reads the leases for our previous lease and then to acquire one; in
# an IPv4-only network the first attempt to acquire uses that listing when it is
# younger than this.  Safe at any age: a choice made on an old listing fails its
# compare-and-swap (no key with that IPv4 subnet may exist), and the next attempt
# lists again.  Not with IPv6: the compare cannot cover the IPv6 half of a key,
# and an old listing would widen the window in which two nodes starting together
# pick the same IPv6 subnet (one of them then finds out and chooses again, see
# _first_ipv6_claimant).  The watch's first snapshot uses that listing too, as
# long as our own write is the only change etcd made since (see
# _listing_with_ours): the snapshot is then exactly the store at our write's
# revision, and the watch goes on from the next one.
LIST_REUSE = 10.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    """How to reach etcd (the ``--etcd-*`` flags)."""

    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    prefix: str = DEFAULT_PREFIX
    keyfile: str = ""
    certfile: str = ""
    cafile: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    renew_margin_minutes: int = 60


@dataclass(frozen=True, slots=True)
class EndpointPlan:
    """One endpoint as the client will dial it."""

    host: str
    port: int
    secure: bool


def plan_endpoints(settings: EtcdSettings) -> list[EndpointPlan]:
    """Parse the endpoint URLs and decide TLS per endpoint; ConfigError if unusable.

    The scheme decides, as in etcd's Go client (v3.5+) that flanneld uses:
    ``https://`` is TLS, ``http://`` is plain even when a certificate is
    configured.  Upstream's quirk: with only ``--etcd-cafile`` it builds no
    TLS config at all, so the CA is ignored (https then trusts the system
    roots; http is plain, silently).  Here the CA is always used for https,
    and a CA or certificate that an ``http://`` endpoint ignores is warned
    about.
    """
    if not settings.endpoints:
        raise ConfigError("no etcd endpoints given")
    if bool(settings.certfile) != bool(settings.keyfile):
        raise ConfigError("--etcd-certfile and --etcd-keyfile must be given together")
    plans = []
    for url in settings.endpoints:
        try:
            parts = urlsplit(url.strip())
            port = parts.port or DEFAULT_PORT
        except ValueError as err:
            raise ConfigError(f"bad etcd endpoint {url!r}: {err}") from err
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"bad etcd endpoint {url!r}: expected http(s)://host:port")
        plans.append(EndpointPlan(parts.hostname, port, parts.scheme == "https"))
    plain = [url for url, plan in zip(settings.endpoints, plans, strict=True) if not plan.secure]
    if plain and (settings.cafile or settings.certfile):
        log.warning(
            "etcd TLS files are configured, but %s use http://: talking PLAIN HTTP to them "
            "(as upstream flanneld does); use https:// endpoints for TLS",
            ", ".join(plain),
        )
    return plans


class EtcdSubnetManager:
    """SubnetManager over etcd v3; thread-safe (one client, many callers)."""

    def __init__(
        self,
        settings: EtcdSettings,
        previous_subnet: tuple[IPv4Network | None, IPv6Network | None] = (None, None),
        *,
        chooser: random.Random | None = None,
        attempts: int = 10,
        backoff_initial: float = 0.1,
        backoff_max: float = RETRY_MAX,
        lease_ttl: int = LEASE_TTL,
        rpc_timeout: float = 5.0,
    ) -> None:
        self.settings = settings
        self._previous = previous_subnet
        self._chooser = chooser or random.Random()
        self._attempts = attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._ttl = lease_ttl
        self._config_key = posixpath.join(settings.prefix, "config")
        self._subnets = posixpath.join(settings.prefix, "subnets") + "/"
        self._lock = threading.Lock()
        self._watches: set[int] = set()
        self._warned: set[tuple[bytes, int]] = set()
        self._listed: dict[bytes, ListedLease] = {}
        self._recent: tuple[list[ListedLease], int, float] | None = None  # see LIST_REUSE
        self._ours: tuple[Lease, int] | None = None  # as listed, and its write's revision
        self._closed = False
        self._timeout = rpc_timeout
        self._login_lock = threading.Lock()
        self._need_login = bool(settings.username)
        self._told_auth_off = False
        self._endpoint_count = len(settings.endpoints)
        self._client = _make_client(settings, rpc_timeout)  # validates the endpoints
        # host:port only: an endpoint URL could carry credentials
        self._where = ", ".join(
            f"{urlsplit(e).hostname}:{urlsplit(e).port or DEFAULT_PORT}" for e in settings.endpoints
        )

    # --- SubnetManager ---------------------------------------------------------

    def get_network_config(self) -> NetConfig:
        value, _meta = self._rpc(lambda: self._client.get(self._config_key))
        if value is None:  # retryable: an admin may write it any moment
            raise StoreError(f"{CONFIG_NOT_FOUND} (key {self._config_key})")
        try:
            cfg = parse_net_config(value)
            subnet_ranges(cfg)
        except ConfigError as err:
            raise ConfigError(f"{self._config_key}: {err}") from err
        return cfg

    def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        cfg = self.get_network_config()
        v4_range, v6_range = subnet_ranges(cfg)
        if v4_range is None:
            raise ConfigError(
                "the etcd subnet manager always allocates IPv4: EnableIPv4 false needs "
                "--kube-subnet-mgr"
            )
        backoff = Backoff(initial=self._backoff_initial, maximum=self._backoff_max)
        for attempt in range(1, self._attempts + 1):
            reuse = attempt == 1 and v6_range is None
            lease = self._try_acquire(attrs, v4_range, v6_range, reuse=reuse)
            if lease is not None:
                # A later re-acquire (our key deleted meanwhile) prefers this subnet.
                self._previous = (lease.subnet, lease.ipv6_subnet)
                return lease
            if attempt < self._attempts:
                time.sleep(backoff.next_delay())
        raise LeaseConflictError(
            f"lost the race for a subnet {self._attempts} times in a row "
            "(other nodes are acquiring at the same time); try again"
        )

    def renew_lease(self, lease: Lease) -> Lease:
        key = self._subnets + lease.key
        value, meta = self._rpc(lambda: self._client.get(key))
        if value is None:
            log.warning("lease %s is gone from etcd (expired or deleted); re-creating", lease.key)
            created = self._create(lease)
            if created is None:
                raise LeaseConflictError(f"subnet {lease.key} was taken by another node")
            return created
        try:
            holder = str(decode_attrs(value).public_ip)
        except PeerDataError:
            holder = "an unreadable value"
        if holder != str(lease.attrs.public_ip):
            raise LeaseConflictError(f"subnet {lease.key} is now held by {holder}")
        compare = self._client.transactions.mod(key) == meta.mod_revision
        ok, expiration, _ = self._put(key, lease.attrs, compare, ttl_less=meta.lease_id == 0)
        if not ok:
            raise LeaseConflictError(f"lease {lease.key} changed while renewing; retry")
        self._revoke(meta.lease_id)
        return lease.with_expiration(expiration)

    def watch_leases(
        self, sink: Sink, stop: threading.Event, report: StoreReport = ignore_store_report
    ) -> None:
        backoff = Backoff(initial=self._backoff_initial, maximum=self._backoff_max)
        revision = 0  # last revision whose events were delivered; 0: list first
        failures = 0  # in a row; only the first of an outage is a WARNING
        while not stop.is_set():
            try:
                if revision == 0:
                    leases, revision = self._listing_with_ours() or self._snapshot()
                    self._forget_listing()  # the peer table holds the leases now
                    sink(Snapshot(leases))
                watch_id, responses = self._open_watch(revision + 1)
                backoff.reset()
                if failures:
                    log.info("lease watch resumed after %d failed attempts", failures)
                    failures = 0
                    report(None)
                for message, revision in self._events(watch_id, responses, stop):
                    sink(message)
            except WatchExpiredError as err:
                log.warning("lease watch fell behind etcd compaction (%s); re-listing", err)
                revision = 0
            except StoreError as err:
                if self._closed:  # close() ended the stream: not a store failure
                    stop.wait(STOP_POLL)
                    continue
                delay = backoff.next_delay()
                failures += 1
                report(err)
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "lease watch failed: %s; reconnecting in %.1fs", err, delay,
                )
                stop.wait(delay)

    def previous_attrs(self, public_ip: IPv4Address | None) -> LeaseAttrs | None:
        """The attributes of the lease held by ``public_ip``: our lease from before a restart."""
        if public_ip is None:
            return None
        mine = held_by(self._list()[0], public_ip)
        return mine.attrs if mine is not None else None

    def leases(self) -> tuple[Lease, ...]:
        """Every parseable lease, read once (diagnostics; the daemon watches instead)."""
        return self._snapshot()[0]

    def public_ip_override(self) -> IPv4Address | None:
        """etcd has no per-node override; ``--public-ip`` is the only way."""
        return None

    def public_ipv6_override(self) -> IPv6Address | None:
        """Nor for IPv6: ``--public-ipv6`` is the only way."""
        return None

    def mark_network_available(self) -> None:
        """Nothing to tell in etcd mode."""

    def close(self) -> None:
        """Cancel watches, then close the client (in this order: gotcha 7)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watches = list(self._watches)
            self._watches.clear()
        for watch_id in watches:
            self._cancel_watch(watch_id)
        self._client.close()

    # --- acquiring ---------------------------------------------------------------

    def _try_acquire(
        self, attrs: LeaseAttrs, v4_range: SubnetRange, v6_range: SubnetRange | None,
        reuse: bool,
    ) -> Lease | None:
        """One attempt (``etcd_state.decide``); None when another writer got in first."""
        listed = self._listing(reuse)[0]
        decision = decide(
            listed, attrs.public_ip, self._previous, (v4_range, v6_range), self._chooser
        )
        if isinstance(decision, Reuse):
            return self._reuse(decision.lease, attrs)
        if decision.stale is not None:
            log.warning(
                "lease %s of this host (%s) does not fit the network config; deleting it",
                subnet_key(decision.stale.v4, decision.stale.v6), attrs.public_ip,
            )
            if not self._delete_if_unchanged(decision.stale):
                return None
        if isinstance(decision, Repair):
            return self._repair(decision.lease, attrs)
        if isinstance(decision, Exhausted):
            raise SubnetsExhaustedError(decision.reason)
        if isinstance(decision, ClaimPrevious):
            log.info("trying our previous subnet %s (subnet file or last lease)",
                     subnet_key(decision.subnet, decision.ipv6_subnet))
        elif decision.passed_over is not None:
            log.info("previous subnet %s is taken or outside the config; not reusing",
                     decision.passed_over)
        return self._create(Lease(decision.subnet, decision.ipv6_subnet, attrs))

    def _reuse(self, entry: ListedLease, attrs: LeaseAttrs) -> Lease | None:
        compare = self._client.transactions.mod(entry.key) == entry.mod_revision
        ok, expiration, revision = self._put(entry.key, attrs, compare,
                                             ttl_less=entry.etcd_lease == 0)
        if not ok:
            return None
        self._revoke(entry.etcd_lease)
        lease = Lease(entry.v4, entry.v6, attrs, expiration)
        self._wrote_ours(lease, revision, entry.create_revision)
        log.info("reusing lease %s of this host (%s)", lease.key, attrs.public_ip)
        return lease

    def _repair(self, entry: ListedLease, attrs: LeaseAttrs) -> Lease | None:
        """Write our lease again over an unreadable value (unless it changes meanwhile)."""
        compare = self._client.transactions.mod(entry.key) == entry.mod_revision
        ok, expiration, revision = self._put(entry.key, attrs, compare, ttl_less=False)
        if not ok:
            return None
        self._revoke(entry.etcd_lease)
        lease = Lease(entry.v4, entry.v6, attrs, expiration)
        self._wrote_ours(lease, revision, entry.create_revision)
        log.warning("our lease %s held an unreadable value; wrote it again", lease.key)
        return lease

    def _create(self, lease: Lease) -> Lease | None:
        # No key with this IPv4 subnet may exist, whatever its IPv6 part.
        v4_prefix = self._subnets + subnet_key(lease.subnet, None)
        compare = self._client.transactions.create(v4_prefix, prefix_range_end(v4_prefix.encode())) == 0
        ok, expiration, revision = self._put(self._subnets + lease.key, lease.attrs, compare,
                                             ttl_less=False)
        if not ok:
            log.info("subnet %s was taken by another node meanwhile; choosing again", lease.key)
            return None
        if lease.ipv6_subnet is not None and not self._first_ipv6_claimant(lease):
            return None
        self._wrote_ours(lease, revision, revision)
        log.info("acquired lease %s for %s", lease.key, lease.attrs.public_ip)
        return lease.with_expiration(expiration)

    def _first_ipv6_claimant(self, lease: Lease) -> bool:
        """Whether our key, just created, is the oldest holding its IPv6 subnet; if not,
        delete it again (the other node picked the same IPv6 subnet at the same time)."""
        entries = self._list()[0]
        key = (self._subnets + lease.key).encode()
        ours = next((e for e in entries if e.key == key), None)
        if ours is None or ours.v6 is None:
            return True  # already gone (deleted or expired): the watch reports it
        older = [e.key for e in entries if e.key != key and e.v6 is not None
                 and e.v6.overlaps(ours.v6) and e.create_revision < ours.create_revision]
        if not older:
            return True
        log.info("IPv6 subnet %s was taken by %s meanwhile; choosing again", ours.v6,
                 older[0].decode(errors="replace"))
        if self._delete_if_unchanged(ours):
            self._revoke(ours.etcd_lease)
        return False

    def _put(
        self, key: str | bytes, attrs: LeaseAttrs, compare: Any, *, ttl_less: bool
    ) -> tuple[bool, datetime | None, int]:
        """Put ``attrs`` under ``key`` if ``compare`` holds, with a fresh etcd lease.

        Returns (done, new expiration or None when TTL-less, the store's revision
        after the put).  When the comparison fails, the granted etcd lease is
        revoked again.
        """
        granted = None if ttl_less else self._rpc(lambda: self._client.lease(self._ttl))
        lease_id = granted.id if granted is not None else 0
        put = self._client.transactions.put(key, encode_attrs(attrs), lease=lease_id)
        try:
            ok, answers = self._rpc(
                lambda: self._client.transaction(compare=[compare], success=[put], failure=[])
            )
        except StoreError:
            self._revoke(lease_id)
            raise
        if not ok:
            self._revoke(lease_id)
            return False, None, 0
        revision = int(answers[0].response_put.header.revision)
        if granted is None:
            return True, None, revision
        return True, datetime.now(UTC) + timedelta(seconds=granted.ttl), revision

    def _delete_if_unchanged(self, entry: ListedLease) -> bool:
        compare = self._client.transactions.mod(entry.key) == entry.mod_revision
        delete = self._client.transactions.delete(entry.key)
        ok, _ = self._rpc(
            lambda: self._client.transaction(compare=[compare], success=[delete], failure=[])
        )
        return bool(ok)

    def _revoke(self, lease_id: int) -> None:
        """Best effort: a lease we fail to revoke expires by itself."""
        if not lease_id:
            return
        try:
            self._rpc(lambda: self._client.revoke_lease(lease_id))
        except StoreError as err:
            log.debug("revoking etcd lease %x failed: %s", lease_id, err)

    # --- listing and watching ------------------------------------------------------

    def _list(self) -> tuple[list[ListedLease], int]:
        """Every parseable key under subnets/ and the store revision of the read.

        Read in pages of LIST_PAGE keys, all at the revision of the first page,
        so one answer never has to hold every value at once.
        """
        entries = []
        # An unchanged key (same mod revision) is not parsed again: the start lists
        # thousands of leases up to three times (previous lease, acquire, snapshot).
        known, listed = self._listed, {}
        start, end = self._subnets.encode(), prefix_range_end(self._subnets.encode())
        revision = 0
        while True:
            resp = self._rpc(
                partial(
                    self._client.get_range_response, start, end, limit=LIST_PAGE,
                    revision=revision or None,
                )
            )
            revision = revision or int(resp.header.revision)
            for kv in resp.kvs:
                entry = known.get(kv.key)
                if entry is None or entry.mod_revision != kv.mod_revision:
                    entry = self._parse_entry(kv)
                if entry is not None:
                    listed[kv.key] = entry
                    entries.append(entry)
            if not resp.more or not resp.kvs:
                self._listed = listed  # the watcher and the main thread both list: swap
                self._recent = (entries, revision, time.monotonic())
                return entries, revision
            start = resp.kvs[-1].key + b"\0"

    def _parse_entry(self, kv: Any) -> ListedLease | None:
        try:
            v4, v6 = self._parse_key(kv.key)
        except PeerDataError as err:
            self._warn_once(kv.key, kv.mod_revision, err)
            return None
        try:
            attrs: LeaseAttrs | None = decode_attrs(kv.value)
        except PeerDataError as err:
            self._warn_once(kv.key, kv.mod_revision, err)
            attrs = None
        return ListedLease(kv.key, v4, v6, attrs, kv.lease, kv.mod_revision, kv.create_revision)

    def _listing(self, reuse: bool) -> tuple[list[ListedLease], int]:
        """The last listing if ``reuse`` and it is recent (LIST_REUSE), else a new one."""
        recent = self._recent
        if reuse and recent is not None and time.monotonic() - recent[2] <= LIST_REUSE:
            return recent[0], recent[1]
        return self._list()

    def _forget_listing(self) -> None:
        """Let the last listing and the parse cache go (until the next listing)."""
        self._recent = None
        self._ours = None
        self._listed = {}

    def _snapshot(self) -> tuple[tuple[Lease, ...], int]:
        entries, revision = self._list()
        leases = tuple(_leases(entries))
        log.debug("listed %d leases at revision %d", len(leases), revision)
        return leases, revision

    def _wrote_ours(self, lease: Lease, revision: int, created: int) -> None:
        """Our lease is in etcd since ``revision`` (created at ``created``)."""
        self._ours = (Lease(lease.subnet, lease.ipv6_subnet, lease.attrs,
                            claim_order=float(created)), revision)

    def _listing_with_ours(self) -> tuple[tuple[Lease, ...], int] | None:
        """The start's recent listing brought up to our lease's write, or None.

        A start lists every lease (for our previous one) and then writes ours;
        when that write's revision directly follows the listing's, nothing else
        changed in etcd between the two, so the listing with our lease in it is
        the store at that revision, and the watch's first snapshot need not read
        5000 leases a third time.  A listing made after the write (the IPv6
        check) is the store at its own revision as it stands.  Anything else
        (another write in between, an old listing): None, list again.
        """
        recent, ours = self._recent, self._ours
        if recent is None or ours is None or time.monotonic() - recent[2] > LIST_REUSE:
            return None
        entries, revision, _ = recent
        lease, written = ours
        if written <= 0 or written > revision + 1:
            return None
        if written <= revision:
            leases = _leases(entries)
        else:
            leases = _leases(entries, leaving_out=(self._subnets + lease.key).encode())
            leases.append(lease)
            revision = written
        log.debug("%d leases at revision %d: the start's listing and our lease", len(leases),
                  revision)
        return tuple(leases), revision

    def _open_watch(self, start: int) -> tuple[int, queue.Queue[Any]]:
        """Start a prefix watch at revision ``start``; its responses arrive on the queue."""
        responses: queue.Queue[Any] = queue.Queue()
        watch_id = self._rpc(
            lambda: self._client.add_watch_prefix_callback(
                self._subnets, responses.put, start_revision=start
            )
        )
        if watch_id < 0:  # etcd created and cancelled it at once: not permitted
            self._need_login = bool(self.settings.username)
            raise StoreError(f"etcd refused to watch {self._subnets} (permissions or auth token)")
        with self._lock:
            self._watches.add(watch_id)
        return watch_id, responses

    def _events(
        self, watch_id: int, responses: queue.Queue[Any], stop: threading.Event
    ) -> Iterator[tuple[LeaseMessage, int]]:
        """The watch's messages with their revisions until ``stop``; cancels it at the end."""
        try:
            while not stop.is_set():
                try:
                    item = responses.get(timeout=STOP_POLL)
                except queue.Empty:
                    continue
                if item is None or isinstance(item, BaseException):
                    _translate(item)
                for event in item.events:
                    message = self._event_message(event)
                    if message is not None:
                        yield message, int(event.mod_revision)
        finally:
            with self._lock:
                known = watch_id in self._watches
                self._watches.discard(watch_id)
            if known:
                self._cancel_watch(watch_id)

    def _event_message(self, event: Any) -> LeaseMessage | None:
        try:
            v4, v6 = self._parse_key(event.key)
        except PeerDataError as err:
            self._warn_once(event.key, int(event.mod_revision), err)
            return None
        key = subnet_key(v4, v6)
        if isinstance(event, DeleteEvent):
            return LeaseRemoved(key)
        try:
            attrs = decode_attrs(event.value)
        except PeerDataError as err:
            # The key no longer holds a usable lease: as after a deletion (and as
            # a re-list sees it); for our own key, the daemon writes it again.
            self._warn_once(event.key, int(event.mod_revision), err)
            return LeaseRemoved(key)
        return LeaseAdded(Lease(v4, v6, attrs, claim_order=float(event.create_revision)))

    def _cancel_watch(self, watch_id: int) -> None:
        try:  # not through _rpc: close() cancels after marking the manager closed
            _call(lambda: self._client.cancel_watch(watch_id))
        except StoreError as err:
            log.debug("cancelling watch %d failed: %s", watch_id, err)

    # --- calls and authentication ------------------------------------------------

    def _rpc(self, func: Callable[[], T]) -> T:
        """One client call, translated into flanneld errors.

        Two cases are retried here because the client cannot: a refused
        connection when other endpoints remain (the client then fails over
        to the next), and a refused auth token (tokens are lost when etcd
        restarts and expire when idle), by logging in again once.
        """
        if self._closed:
            raise StoreError("the etcd subnet manager is closed")
        if self._need_login:
            self._login()
        endpoints_left = self._endpoint_count - 1
        logged_in_again = False
        while True:
            try:
                return func()
            except etcd_errors.ConnectionFailedError as err:
                if endpoints_left <= 0:
                    raise StoreError(
                        f"cannot reach etcd at {self._where} (is it "
                        "running, and are --etcd-endpoints and the TLS flags right?)"
                    ) from err
                endpoints_left -= 1
                log.debug("etcd endpoint unreachable; failing over to the next one")
            except grpc.RpcError as err:
                refused = _code(err) == grpc.StatusCode.UNAUTHENTICATED
                if logged_in_again or not (refused and self.settings.username):
                    _translate(err)
                log.info("etcd refused our auth token (expired or etcd restarted); logging in")
                self._login()
                logged_in_again = True
            except etcd_errors.Etcd3Exception as err:
                _translate(err)

    def _login(self) -> None:
        request = AuthenticateRequest(name=self.settings.username, password=self.settings.password)
        with self._login_lock:
            try:
                response = self._client.authstub.Authenticate(request, self._timeout)
            except grpc.RpcError as err:
                # etcd answers FAILED_PRECONDITION to Authenticate only when auth is
                # off (ErrGRPCAuthNotEnabled); etcd's Go client then goes on without.
                if _code(err) != grpc.StatusCode.FAILED_PRECONDITION:
                    _translate(err)
                self._need_login = False
                if not self._told_auth_off:
                    self._told_auth_off = True
                    log.warning(
                        "etcd at %s has authentication disabled: --etcd-username and "
                        "--etcd-password are not needed; going on without them", self._where,
                    )
                return
            # The token travels as plain metadata, as etcd's own client sends it;
            # gRPC call credentials would demand TLS.
            self._client.metadata = (("token", response.token),)
            stale = self._client.watcher
            self._client.watcher = self._client.get_watcher()  # new streams, new token
            self._need_login = False
        stale.close()

    # --- helpers -------------------------------------------------------------

    def _parse_key(self, key: bytes) -> tuple[IPv4Network, IPv6Network | None]:
        try:
            name = key.decode()
        except UnicodeDecodeError as err:
            raise PeerDataError(f"subnet key is not UTF-8: {err}") from err
        return parse_canonical_key(name.removeprefix(self._subnets))

    def _warn_once(self, key: bytes, revision: int, err: PeerDataError) -> None:
        with self._lock:
            if (key, revision) in self._warned:
                return
            self._warned.add((key, revision))
        log.warning("ignoring bad subnet lease %r: %s", key, err)


# --- module helpers ----------------------------------------------------------------


def _leases(entries: Iterable[ListedLease], leaving_out: bytes = b"") -> list[Lease]:
    """The listed keys with a readable value (but ``leaving_out``), as the watch hands
    them on."""
    return [Lease(e.v4, e.v6, e.attrs, claim_order=float(e.create_revision))
            for e in entries if e.attrs is not None and e.key != leaving_out]


def _make_client(settings: EtcdSettings, timeout: float) -> MultiEndpointEtcd3Client:
    plans = plan_endpoints(settings)
    creds = _tls_credentials(settings) if any(p.secure for p in plans) else None
    # pyetcd skips an endpoint for time_retry seconds after it failed (default
    # 300 s).  One endpoint: never skip it.  Several: skip it briefly, so the
    # next call fails over to another one.
    time_retry = 0.0 if len(plans) == 1 else FAILOVER_PAUSE
    endpoints = [
        Endpoint(
            p.host, p.port, secure=p.secure, creds=creds if p.secure else None,
            time_retry=time_retry, opts=list(GRPC_OPTIONS),
        )
        for p in plans
    ]
    if bool(settings.username) != bool(settings.password):
        raise ConfigError("--etcd-username and --etcd-password must be given together")
    # No user/password here: pyetcd would log in once, over call credentials
    # (TLS only), and never again.  EtcdSubnetManager._login does it instead.
    return MultiEndpointEtcd3Client(endpoints=endpoints, timeout=timeout, failover=True)


def _tls_credentials(settings: EtcdSettings) -> grpc.ChannelCredentials:
    def read(path: str, what: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as err:
            raise ConfigError(f"cannot read etcd {what} {path}: {err.strerror}") from err

    return grpc.ssl_channel_credentials(
        root_certificates=read(settings.cafile, "CA file"),
        private_key=read(settings.keyfile, "key file"),
        certificate_chain=read(settings.certfile, "certificate file"),
    )


def _call(func: Callable[[], T]) -> T:
    """Run one client call; translate etcd and gRPC failures into StoreError."""
    try:
        return func()
    except (etcd_errors.Etcd3Exception, grpc.RpcError) as err:
        _translate(err)


def _code(err: grpc.RpcError) -> grpc.StatusCode | None:
    return err.code() if isinstance(err, grpc.Call) else None


def _translate(err: BaseException | None) -> NoReturn:
    """Raise the flanneld error for a client failure (None: the stream just ended)."""
    if err is None:
        raise StoreError("etcd closed the watch stream")
    if isinstance(err, etcd_errors.RevisionCompactedError):
        raise WatchExpiredError(
            f"revision compacted (oldest kept: {err.compacted_revision})"
        ) from err
    if isinstance(err, grpc.Call):
        raise StoreError(f"etcd call failed: {err.code()}: {err.details()}") from err
    if isinstance(err, etcd_errors.Etcd3Exception | grpc.RpcError):
        raise StoreError(f"etcd call failed: {type(err).__name__}: {err}") from err
    raise err

