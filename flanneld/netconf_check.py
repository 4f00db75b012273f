"""What a net-conf.json means to the daemon: checking it, describing it, noticing edits.

``verify`` is the one verdict: the daemon applies it at start-up and to an
edited ConfigMap, and ``flannelctl netconf validate`` prints it (parse, then
(etcd mode) derive the subnet ranges, then the backend's options and the
address families it runs).  A valid edit of a running
daemon's config is reported as needing a restart (upstream reads the file
once); an invalid one is reported and the running config is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from backends.registry import lookup
from flanneld.health import HealthState
from subnet.errors import ConfigError
from subnet.netconf import NetConfig, SubnetRange, ip_stack, parse_net_config, subnet_ranges

log = logging.getLogger(__name__)

Mode = Literal["kube", "etcd"]
DETAIL_TOPIC = "net-conf"


@dataclass(frozen=True, slots=True)
class NetConfReport:
    """A valid net-conf.json and what the daemon derives from it."""

    config: NetConfig
    ranges: tuple[SubnetRange | None, SubnetRange | None] | None
    backend_options: dict[str, object]


def check(text: str | bytes, mode: Mode) -> NetConfReport:
    """Parse, then :func:`verify`; ConfigError with the first problem."""
    return verify(parse_net_config(text), mode)


def verify(config: NetConfig, mode: Mode) -> NetConfReport:
    """The one verdict on a net-conf.json, for the daemon's start-up and for the validator.

    ConfigError with the first problem: no address family, the subnet ranges
    (etcd mode), a missing Network (kube mode), the backend's type, options
    and address families.
    """
    ip_stack(config)
    ranges = subnet_ranges(config) if mode == "etcd" else None
    if mode == "kube":
        for enabled, network, key in (
            (config.enable_ipv4, config.network, "Network"),
            (config.enable_ipv6, config.ipv6_network, "IPv6Network"),
        ):
            if enabled and network is None:
                raise ConfigError(f"{key} is required when its address family is enabled")
    entry = lookup(config.backend.type)
    options = entry.options(config.backend)
    entry.accepts(config)
    return NetConfReport(config, ranges, options)


def describe(report: NetConfReport) -> str:
    """A readable summary of what the daemon would use."""
    cfg = report.config
    lines = []
    if cfg.enable_ipv4:
        lines.append(f"Network:      {cfg.network}")
    if cfg.enable_ipv6:
        lines.append(f"IPv6Network:  {cfg.ipv6_network}")
    for rng in report.ranges or ():
        if rng is not None:
            lines.append(
                f"  IPv{rng.network.version} node subnets: /{rng.subnet_len} from "
                f"{rng.subnet_min} to {rng.subnet_max}"
            )
    lines.append(f"Traffic rules: {'nftables' if cfg.enable_nftables else 'iptables'}")
    options = ", ".join(f"{k}={v}" for k, v in report.backend_options.items())
    lines.append(f"Backend:      {cfg.backend.type}" + (f" ({options})" if options else ""))
    return "\n".join(lines)


class NetConfWatcher:
    """Polls the mounted net-conf.json and reports edits (call :meth:`poll` periodically)."""

    def __init__(self, path: str, running: NetConfig, mode: Mode, health: HealthState) -> None:
        self._path = Path(path)
        self._running = running
        self._mode = mode
        self._health = health
        self._seen = self._content()

    def _content(self) -> bytes | None:
        """The file as it is now (a few hundred bytes), None when it cannot be read."""
        try:
            return self._path.read_bytes()
        except OSError:
            return None

    def poll(self) -> None:
        content = self._content()
        if content == self._seen:
            return
        self._seen = content
        if content is None:
            message = f"{self._path} is gone; keeping the running config"
            log.error("%s", message)
            self._health.set_detail(DETAIL_TOPIC, message)
            return
        try:
            report = check(self._path.read_bytes(), self._mode)
        except (ConfigError, OSError) as err:
            message = f"net-conf.json edit rejected: {err}; the running config is kept"
            log.error("%s (%s)", message, self._path)
            self._health.set_detail(DETAIL_TOPIC, message)
            return
        if report.config == self._running:
            log.info("%s changed but means the same; nothing to do", self._path)
            self._health.set_detail(DETAIL_TOPIC, None)
            return
        message = (
            "net-conf.json changed and is valid; restart flanneld on every node to apply it "
            "(the running config is kept until then)"
        )
        log.warning("%s: %s", message, describe(report).replace("\n", "; "))
        self._health.set_detail(DETAIL_TOPIC, message)
