"""flanneld's command line: upstream's flags, Go ``flag`` syntax, ``FLANNELD_*`` env.

Syntax follows Go's ``flag`` package, so existing unit files and manifests
keep working: one or two dashes, ``-f=v`` or ``-f v``, booleans as ``-f`` or
``-f=false`` (Go ``strconv.ParseBool`` spellings), integers in Go's base-0
notation, ``--`` ends the flags.  Names are matched exactly; there is no
prefix abbreviation.  After the command line, every flag it did not set is
read from ``FLANNELD_<NAME>`` (upper case, ``-`` -> ``_``); empty values are
ignored and a repeatable flag gets exactly one entry from the environment.

Deliberate differences from upstream, all in the direction of failing loudly:
an unknown flag or a bad value exits 2 (upstream's usage hook exits 0), a
bad ``FLANNELD_*`` value is an error (upstream logs it and keeps the
default), stray positional arguments are rejected (upstream silently stops
parsing there, dropping every flag after them), and ``--healthz-port``
outside 0..65535 or ``--iptables-resync`` below 1 are errors.  Like
upstream, ``--version`` is an action, not a setting, so Flags has no field
for it.

``--resync-interval`` is pyflannel's own: the period, in seconds, of the full
data-plane reconcile.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import flanneld
from subnet.errors import (
    ConfigError,
)

log = logging.getLogger(__name__)

ENV_PREFIX = "FLANNELD_"
PROGRAM = "flanneld"
USAGE_EXIT = 2
RENEW_MARGIN_MAX = 24 * 60 - 1  # minutes; upstream rejects >= one day

Parser = Callable[[str], Any]


# --- value parsers (Go semantics) ------------------------------------------------

_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_GO_INT = re.compile(r"[+-]?(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|0[0-7_]*|[1-9][0-9_]*)")
_INT64 = 2**63
_INT32 = 2**31


def parse_go_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``: 1 t T TRUE true True, and the false analogues."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError("not a boolean (use true/false, t/f or 1/0)")


def parse_go_int(text: str) -> int:
    """Go's ``strconv.ParseInt(s, 0, 64)``: 0x.., 0o.., 0b.., leading-0 octal, ``_``."""
    if not _GO_INT.fullmatch(text):
        raise ValueError("not an integer")
    sign = "-" if text[0] == "-" else ""
    digits = text[1:] if text[0] in "+-" else text
    if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xXoObB":
        digits = "0o" + digits[1:]  # Go's legacy octal: 010 == 8
    try:
        value = int(sign + digits, 0)
    except ValueError:
        raise ValueError("not an integer") from None
    if not -_INT64 <= value < _INT64:
        raise ValueError("value out of range")
    return value


def _parse_level(text: str) -> int:
    """klog's ``-v``: a decimal 32-bit integer."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError("not a decimal integer")
    value = int(text)
    if not -_INT32 <= value < _INT32:
        raise ValueError("value out of range")
    return value


def _parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _parse_percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not 0 < value <= 100:
        raise ValueError("must be a percentage above 0, at most 100")
    return value


def _parse_str(text: str) -> str:
    return text


# --- the flag set ------------------------------------------------------------------


def _flag(default: Any, help_text: str, *, name: str = "", parser: Parser | None = None,
          secret: bool = False) -> Any:
    """A Flags field; the flag name defaults to the field name with ``-`` for ``_``."""
    if parser is None:
        parser = {bool: parse_go_bool, int: parse_go_int, str: _parse_str,
                  tuple: _parse_str}[type(default)]
    meta = {"flag": name, "help": help_text, "parser": parser}
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True, slots=True)
class Flags:
    """Every flanneld flag after command line and environment, with upstream defaults."""

    etcd_endpoints: str = _flag("http://127.0.0.1:4001,http://127.0.0.1:2379",
                                "a comma-delimited list of etcd endpoints")
    etcd_prefix: str = _flag("/coreos.com/network", "etcd prefix")
    etcd_keyfile: str = _flag("", "SSL key file used to secure etcd communication")
    etcd_certfile: str = _flag("", "SSL certification file used to secure etcd communication")
    etcd_cafile: str = _flag("", "SSL Certificate Authority file used to secure etcd communication")
    etcd_username: str = _flag("", "username for BasicAuth to etcd")
    etcd_password: str = _flag("", "password for BasicAuth to etcd", secret=True)
    iface: tuple[str, ...] = _flag((), "interface to use (IP or name) for inter-host "
                                   "communication; repeatable, tried in order")
    iface_regex: tuple[str, ...] = _flag((), "regex matched against interface IPs, then "
                                         "names; repeatable, tried after every --iface")
    iface_can_reach: str = _flag("", "use the interface (and source IP) the kernel would use "
                                 "to reach this IP")
    subnet_file: str = _flag("/run/flannel/subnet.env",
                             "filename where env variables (subnet, MTU, ...) will be written to")
    public_ip: str = _flag("", "IP accessible by other nodes for inter-host communication")
    public_ipv6: str = _flag("", "IPv6 accessible by other nodes for inter-host communication")
    subnet_lease_renew_margin: int = _flag(60, "subnet lease renewal margin, in minutes, "
                                           "ranging from 1 to 1439")
    ip_masq: bool = _flag(False, "setup IP masquerade rule for traffic destined outside of "
                          "overlay network")
    ip_masq_fully_random_disable: bool = _flag(False, "do not use fully-random port mapping "
                                               "on the masquerade rules")
    kube_subnet_mgr: bool = _flag(False, "contact the Kubernetes API for subnet assignment "
                                  "instead of etcd")
    kube_api_url: str = _flag("", "Kubernetes API server URL (not needed in a pod)")
    kube_annotation_prefix: str = _flag("flannel.alpha.coreos.com",
                                        "Kubernetes annotation prefix (at most one '/')")
    kubeconfig_file: str = _flag("", "kubeconfig file location (not needed in a pod)")
    healthz_ip: str = _flag("0.0.0.0", "the IP address for healthz server to listen")
    healthz_port: int = _flag(0, "the port for healthz server to listen (0 to disable)")
    iptables_resync: int = _flag(5, "resync period for iptables rules, in seconds")
    iptables_forward_rules: bool = _flag(True, "add default accept rules to FORWARD chain "
                                         "in iptables")
    ip_blackhole_route: bool = _flag(False, "keep a blackhole route for the local pod subnet")
    net_config_path: str = _flag("/etc/kube-flannel/net-conf.json",
                                 "path to the network configuration file")
    set_node_network_unavailable: bool = _flag(True, "set NodeNetworkUnavailable after ready")
    v: int = _flag(0, "log level verbosity (1 and up add debug logs)", parser=_parse_level)
    vmodule: str = _flag("", "accepted for klog compatibility; ignored")
    log_backtrace_at: str = _flag("", "accepted for klog compatibility; ignored",
                                  name="log_backtrace_at")
    resync_interval: float = _flag(10.0, "pyflannel: seconds between full data-plane "
                                   "reconciles", parser=_parse_seconds)
    resync_max_cpu: float = _flag(0.5, "pyflannel: percent of one core that periodic full "
                                  "passes may take (slow ones are spaced further apart)",
                                  parser=_parse_percent)
    network_policy: bool = _flag(False, "pyflannel: enforce Kubernetes NetworkPolicy with "
                                 "nftables (needs --kube-subnet-mgr and br_netfilter)")


@dataclass(frozen=True, slots=True)
class _Spec:
    """One flag: the Flags field it sets, its name, how its value is read, help, default."""

    attr: str
    name: str
    parser: Parser
    help: str
    default: Any

    @property
    def is_bool(self) -> bool:
        return self.parser is parse_go_bool

    @property
    def repeatable(self) -> bool:
        return isinstance(self.default, tuple)

    @property
    def env_key(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


def _specs() -> dict[str, _Spec]:
    specs = {}
    for f in dataclasses.fields(Flags):
        name = f.metadata["flag"] or f.name.replace("_", "-")
        specs[name] = _Spec(f.name, name, f.metadata["parser"], f.metadata["help"], f.default)
    return specs


_SPECS = _specs()


class FlagsExit(SystemExit):
    """Parsing ended the program: help or version printed (0), or a usage error (2)."""


def _show_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def usage_text() -> str:
    lines = [f"Usage: {PROGRAM} [OPTION]..."]
    for spec in sorted(_SPECS.values(), key=lambda s: s.name):
        kind = "" if spec.is_bool else " value"
        shown = f" (default {_show_default(spec.default)})" if spec.default else ""
        more = " (repeatable)" if spec.repeatable else ""
        dashes = "-" if len(spec.name) == 1 else "--"
        lines.append(f"  {dashes}{spec.name}{kind}\n    \t{spec.help}{more}{shown}")
    lines.append("  --version\n    \tprint version and exit")
    lines.append(f"Every flag can also be set as {ENV_PREFIX}<NAME> "
                 f"(upper case, '-' as '_'); the command line wins.")
    return "\n".join(lines) + "\n"


def _usage_error(message: str, stderr: TextIO) -> FlagsExit:
    stderr.write(f"{message}\n{usage_text()}")
    return FlagsExit(USAGE_EXIT)


def _unknown(name: str, has_value: bool, value: str, stderr: TextIO) -> bool:
    """Handle a name that is no setting: help exits, version returns its value, else error."""
    if name in ("help", "h"):
        stderr.write(usage_text())
        raise FlagsExit(0)
    if name == "version":
        try:
            return parse_go_bool(value) if has_value else True
        except ValueError as err:
            raise _usage_error(f"invalid boolean value {value!r} for -version: {err}",
                               stderr) from None
    import difflib  # only here, on a mistyped flag: not part of every start

    close = difflib.get_close_matches(name, _SPECS, n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    raise _usage_error(f"flag provided but not defined: -{name}{hint}", stderr)


def _parse_argv(argv: Sequence[str], stderr: TextIO) -> tuple[dict[str, Any], bool]:
    """Go ``flag.Parse``: the values set on the command line, and whether --version was."""
    values: dict[str, Any] = {}
    version = False
    args = list(argv)
    while args:
        arg = args[0]
        if len(arg) < 2 or arg[0] != "-":
            break  # the first non-flag argument ends the flags
        args.pop(0)
        if arg == "--":
            break
        name = arg[2:] if arg[1] == "-" else arg[1:]
        if not name or name[0] in "-=":
            raise _usage_error(f"bad flag syntax: {arg}", stderr)
        name, equals, value = name.partition("=")
        has_value = bool(equals)
        spec = _SPECS.get(name)
        if spec is None:
            version = _unknown(name, has_value, value, stderr)
            continue
        if spec.is_bool:
            text = value if has_value else "true"
        elif has_value:
            text = value
        elif args:
            text = args.pop(0)
        else:
            raise _usage_error(f"flag needs an argument: -{name}", stderr)
        try:
            parsed = spec.parser(text)
        except ValueError as err:
            raise _usage_error(f"invalid value {text!r} for flag -{name}: {err}", stderr) from None
        if spec.repeatable:
            values[spec.attr] = values.get(spec.attr, ()) + (parsed,)
        else:
            values[spec.attr] = parsed
    if args:
        hint = ("; a boolean flag takes its value as -flag=false"
                if args[0] in _GO_TRUE | _GO_FALSE else "")
        raise _usage_error(f"unexpected argument {args[0]!r}: {PROGRAM} takes no positional "
                           f"arguments{hint}", stderr)
    return values, version


def _apply_env(values: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Fill every flag not set on the command line from FLANNELD_*; CLI wins."""
    for spec in _SPECS.values():
        if spec.attr in values:
            continue
        text = environ.get(spec.env_key, "")
        if not text:
            continue
        try:
            parsed = spec.parser(text)
        except ValueError as err:
            raise ConfigError(f"invalid value {text!r} in {spec.env_key}: {err}") from None
        values[spec.attr] = (parsed,) if spec.repeatable else parsed


def _validate(flags: Flags) -> None:
    margin = flags.subnet_lease_renew_margin
    if not 1 <= margin <= RENEW_MARGIN_MAX:
        raise ConfigError(f"invalid subnet-lease-renew-margin option {margin}: out of acceptable "
                          f"range 1..{RENEW_MARGIN_MAX} minutes")
    if not 0 <= flags.healthz_port <= 65535:
        raise ConfigError(f"invalid healthz-port {flags.healthz_port}: must be 0..65535 "
                          f"(0 disables the health server)")
    if flags.iptables_resync < 1:
        raise ConfigError(f"invalid iptables-resync {flags.iptables_resync}: must be at least "
                          f"1 second")
    if flags.network_policy and not flags.kube_subnet_mgr:
        raise ConfigError("--network-policy needs --kube-subnet-mgr: NetworkPolicies, Pods and "
                          "Namespaces are read from the Kubernetes API (etcd mode has none)")


def parse_flags(argv: Sequence[str], environ: Mapping[str, str], *,
                stderr: TextIO | None = None) -> Flags:
    """Parse the command line (without the program name) and apply FLANNELD_* env.

    Raises FlagsExit (a SystemExit) after printing help or the version
    (code 0) or a usage error (code 2) to ``stderr``; ConfigError for a bad
    environment value or an out-of-range setting (upstream exits 1).
    """
    out = sys.stderr if stderr is None else stderr
    values, version = _parse_argv(argv, out)
    if version:
        out.write(f"{flanneld.__version__}\n")
        raise FlagsExit(0)
    _apply_env(values, environ)
    flags = Flags(**values)
    _validate(flags)
    return flags
