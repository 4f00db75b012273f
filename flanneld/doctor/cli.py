"""``flannelctl doctor``: the subcommand, wired to gather -> judge -> render."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Sequence

from flanneld.doctor import judge
from flanneld.doctor.gather import Options, observe
from flanneld.doctor.render import failed, render_json, render_table
from flanneld.flags import FlagsExit, parse_flags
from subnet.errors import ConfigError

EXIT_OK = 0
EXIT_PROBLEMS = 1
DEFAULT_TIMEOUT = 2.0
DEFAULT_CNI_DIR = "/etc/cni/net.d"

DESCRIPTION = """\
Check this node for what breaks pod networking and name the fix: the daemon
(running, ready, lease, subnet.env), every peer's kernel entries and on-wire
reachability, MTUs and the path MTU, host settings (forwarding, br_netfilter,
rp_filter, conntrack, firewall, checksum offload, CNI config, cni0), and the
cluster's claims.  Give flanneld's own flags after the options (or set the
same FLANNELD_* variables), e.g.:
  flannelctl doctor --json -- --etcd-endpoints=http://10.0.0.1:2379 --iface=eth1 --ip-masq
Exits 1 if any check fails."""


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    """The doctor's own options (shared by ``doctor`` and ``lab doctor``)."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT,
        help=f"seconds for each read and for the probes (default {DEFAULT_TIMEOUT:g})",
    )


def add_doctor_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = subparsers.add_parser(
        "doctor", help="find what breaks pod networking on this node and name the fix",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        usage="flannelctl doctor [--json] [--timeout S] [--cni-conf-dir DIR] "
        "[-- FLANNELD_FLAG ...]",
    )
    add_doctor_arguments(doctor)
    doctor.add_argument(
        "--cni-conf-dir", default=DEFAULT_CNI_DIR,
        help=f"the container runtime's CNI config directory (default {DEFAULT_CNI_DIR})",
    )
    doctor.set_defaults(func=run_doctor, flanneld_flags=True)


def run_doctor(args: argparse.Namespace) -> int:
    extra: Sequence[str] = [a for a in getattr(args, "extra", ()) if a != "--"]
    stderr = io.StringIO()
    try:
        flags = parse_flags(extra, os.environ, stderr=stderr)
    except FlagsExit as done:
        sys.stderr.write(stderr.getvalue())
        raise ConfigError("bad flanneld flags for doctor (see above)") from done
    started = time.monotonic()
    options = Options(flags, args.timeout, args.cni_conf_dir, dict(os.environ))
    results = judge(observe(options))
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps(render_json(results, elapsed)))
    else:
        print(render_table(results, elapsed))
    return EXIT_PROBLEMS if failed(results) else EXIT_OK
