"""``flannelctl``: the operator CLI.

Subcommand groups register themselves through one function each
(``add_<group>_commands(subparsers)``); each leaf sets ``func``, which
returns the process exit code.  Only :func:`main` maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from flanneld.doctor.cli import add_doctor_arguments, add_doctor_commands
from flanneld.lab import lab as labmod
from flanneld.lab import netprobe
from flanneld.lab.layout import (
    BACKENDS,
    DEFAULT_PREFIX,
    IP_FAMILIES,
    SUBNET_MGRS,
    parse_flanneld_binaries,
)
from flanneld.lab.leases import NodeLease
from flanneld.lab.matrix import Cell
from flanneld.netconf_check import check, describe
from flanneld.netpol.cli import add_netpol_commands
from subnet.errors import ConfigError, FlannelError

EXIT_OK = 0
EXIT_FAILED = 1

Handler = Callable[[argparse.Namespace], int]


# --- rendering (pure) -----------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def render_leases(leases: Sequence[NodeLease]) -> str:
    rows = [
        (lease.name, str(lease.subnet), str(lease.public_ip), lease.vtep_mac or "-")
        for lease in leases
    ]
    return _table(("NODE", "SUBNET", "PUBLIC IP", "VTEP MAC"), rows)


def render_matrix(cells: Sequence[Cell]) -> str:
    """A src x dst grid per address family; each entry the average RTT in ms, or FAIL."""
    families = sorted({c.family for c in cells})
    if len(families) <= 1:
        return _family_matrix(cells)
    return "\n\n".join(
        f"IPv{family}:\n" + _family_matrix([c for c in cells if c.family == family])
        for family in families
    )


def _family_matrix(cells: Sequence[Cell]) -> str:
    names = sorted({c.src for c in cells} | {c.dst for c in cells})
    by_pair = {(c.src, c.dst): c for c in cells}

    def entry(src: str, dst: str) -> str:
        cell = by_pair.get((src, dst))
        if cell is None:
            return "-"
        if not cell.ok:
            return f"FAIL {cell.received}/{cell.sent}"
        return f"{cell.rtt_ms:.3f} ms" if cell.rtt_ms is not None else "ok"

    rows = [(src, *(entry(src, dst) for dst in names)) for src in names]
    return _table(("FROM \\ TO", *names), rows)


def up_json(leases: Sequence[NodeLease], cells: Sequence[Cell]) -> dict[str, object]:
    return {
        "nodes": [
            {"name": lease.name, "subnet": str(lease.subnet), "public_ip": str(lease.public_ip)}
            for lease in leases
        ],
        "matrix": [cell.to_json() for cell in cells],
    }


# --- lab ------------------------------------------------------------------------------


def _lab_up(args: argparse.Namespace) -> int:
    try:
        lab = labmod.up(
            nodes=args.nodes,
            backend=args.backend,
            pods_per_node=args.pods_per_node,
            prefix=args.prefix,
            subnet_mgr=args.subnet_mgr,
            image=args.image,
            manifest=args.manifest,
            flanneld=parse_flanneld_binaries(args.flanneld),
            ip_family=args.ip_family,
            network_policy=args.network_policy,
            netpol_model=args.netpol_model,
        )
        leases = lab.leases()
        # the model's 72 TCP probes stand for the ping matrix (and take a second, not minutes)
        cells = [] if args.netpol_model else lab.matrix(count=args.count, timeout=args.ping_timeout)
        probes = lab.probe() if args.netpol_model else []
    except ConfigError:
        raise  # raised before anything was built: nothing of ours to remove
    except (FlannelError, KeyboardInterrupt):
        if not args.keep:
            labmod.down(args.prefix)
        raise
    ok = all(cell.ok for cell in cells) and all(p.ok for p in probes)
    if args.json:
        doc = up_json(leases, cells)
        if args.netpol_model:
            doc["probes"] = [p.to_json() for p in probes]
        print(json.dumps(doc))
    else:
        print(
            f"lab {args.prefix}: {args.nodes} nodes, backend {args.backend}, "
            f"subnet manager {args.subnet_mgr}"
            + (f", DaemonSet pods from {args.image}" if args.image else "")
        )
        for node in lab.plan.nodes:
            if node.flanneld is not None:
                print(f"{node.name} runs {node.flanneld}")
        if lab.unhonoured:
            print("pod spec fields the lab does not honour: " + ", ".join(lab.unhonoured))
        print(render_leases(leases))
        print()
        if probes:
            model = [p.key for p in lab.model_pods]
            print("e2e model, TCP port 80 (. reachable, X not):")
            print(netprobe.render(model, probes))
            sctp = netprobe.sctp_error()  # opens a probe socket: once
            if sctp:
                print(f"SCTP: {sctp}")
        else:
            print(render_matrix(cells) if cells else "(fewer than two pods: no ping matrix)")
        print()
        print("all pods reach each other" if ok else "SOME PODS CANNOT REACH EACH OTHER")
    tear_down = args.down_after or (not ok and not args.keep)
    if tear_down:
        labmod.down(args.prefix)
        if not args.json:
            print(f"lab {args.prefix} torn down")
    elif not args.json:
        print(f"lab {args.prefix} is up; tear it down with: flannelctl lab down --prefix {args.prefix}")
    return EXIT_OK if ok else EXIT_FAILED


def _lab_down(args: argparse.Namespace) -> int:
    report = labmod.down(args.prefix)
    print(
        f"lab {args.prefix}: stopped {len(report.stopped)} processes, "
        f"removed {len(report.namespaces)} namespaces"
        + ("" if report.state_removed else " (no state dir)")
    )
    return EXIT_OK


def _lab_status(args: argparse.Namespace) -> int:
    status = labmod.Lab.attach(args.prefix).status()
    if args.json:
        print(
            json.dumps(
                {
                    "prefix": status.prefix,
                    "backend": status.backend,
                    "subnet_mgr": status.subnet_mgr,
                    "etcd_running": status.etcd_running,
                    "kubeapi_running": status.kubeapi_running,
                    "nodes": [
                        {
                            "name": n.name,
                            "netns": n.netns,
                            "flanneld_pid": n.flanneld_pid,
                            "lease": n.lease.to_json() if n.lease else None,
                            "pods": [{"name": p.name, "ip": p.ip} for p in n.pods],
                        }
                        for n in status.nodes
                    ],
                }
            )
        )
        return EXIT_OK
    store, running = (
        ("API double", status.kubeapi_running)
        if status.subnet_mgr == "kube"
        else ("etcd", status.etcd_running)
    )
    print(
        f"lab {status.prefix}: backend {status.backend}, "
        f"{store} {'running' if running else 'NOT RUNNING'}"
    )
    rows = [
        (
            n.name,
            str(n.flanneld_pid) if n.flanneld_pid else "DOWN",
            str(n.lease.subnet) if n.lease else "-",
            str(n.lease.public_ip) if n.lease else "-",
            (n.lease.vtep_mac or "-") if n.lease else "-",
            " ".join(f"{p.name}={p.ip or '?'}" for p in n.pods) or "-",
        )
        for n in status.nodes
    ]
    print(_table(("NODE", "FLANNELD", "SUBNET", "PUBLIC IP", "VTEP MAC", "PODS"), rows))
    return EXIT_OK


def _lab_logs(args: argparse.Namespace) -> int:
    sys.stdout.write(labmod.Lab.attach(args.prefix).logs(args.node))
    return EXIT_OK


def _lab_doctor(args: argparse.Namespace) -> int:
    lab = labmod.Lab.attach(args.prefix)
    extra = ["--json"] if args.json else []
    done = lab.doctor(args.node, [*extra, "--timeout", f"{args.timeout:g}"], capture=False)
    return done.returncode


def _lab_probe(args: argparse.Namespace) -> int:
    lab = labmod.Lab.attach(args.prefix)
    results = lab.probe(args.port, args.protocol, args.timeout)
    if args.json:
        print(json.dumps({"port": args.port, "protocol": args.protocol,
                          "probes": [r.to_json() for r in results]}))
    else:
        print(f"{args.protocol.upper()} port {args.port}: . reachable, X not, - not probed")
        print(netprobe.render([p.key for p in lab.model_pods], results))
    return EXIT_OK


def _lab_kubeconfig(args: argparse.Namespace) -> int:
    print(json.dumps(labmod.Lab.attach(args.prefix).kubeconfig(), indent=1))
    return EXIT_OK


def _add_prefix(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"lab name prefix (default {DEFAULT_PREFIX})"
    )


def add_lab_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = subparsers.add_parser("lab", help="the multi-node lab (network namespaces)")
    cmds = lab.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")

    up = cmds.add_parser(
        "up",
        help="build a lab, print leases and the pod-to-pod ping matrix",
        description="Build a lab and leave it running (unless --down-after). Exits 1 if any "
        "pod cannot reach another; a failed lab is torn down unless --keep.",
    )
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    up.add_argument("--backend", choices=BACKENDS, default="vxlan", help="default vxlan")
    up.add_argument("--pods-per-node", type=int, default=1, help="default 1")
    up.add_argument(
        "--subnet-mgr",
        choices=SUBNET_MGRS,
        default="etcd",
        help="etcd (default): a private etcd; kube: flanneld --kube-subnet-mgr against the "
        "Kubernetes API double that ships with the lab (flanneld.lab.apiserver)",
    )
    up.add_argument(
        "--image",
        help="kube mode: run the manifest's DaemonSet pod on each node from this image with "
        "podman (init containers, mounts, token), e.g. localhost/pyflannel:dev",
    )
    up.add_argument(
        "--manifest",
        help="with --image: the manifest (default: manifests/kube-flannel.yml of this checkout)",
    )
    up.add_argument(
        "--ip-family",
        choices=IP_FAMILIES,
        default="ipv4",
        help="ipv4 (default); dual: an IPv6 underlay too, EnableIPv6 with IPv6Network "
        "fd00:10:244::/56, pods with both families and a matrix per family; ipv6: IPv6 only "
        "(kube mode: upstream's etcd manager always leases IPv4). Every backend but udp "
        "(IPv4-only, in upstream too)",
    )
    up.add_argument(
        "--flanneld",
        action="append",
        default=[],
        metavar="NODE=PATH",
        help="run NODE's flanneld from this binary (e.g. an upstream build) with the same "
        "upstream flags, to test a mixed cluster; repeatable",
    )
    _add_prefix(up)
    up.add_argument("--json", action="store_true", help="print one JSON object")
    up.add_argument(
        "--down-after", action="store_true", help="tear the lab down after printing (one-shot)"
    )
    up.add_argument(
        "--network-policy", action="store_true",
        help="kube mode: flanneld --network-policy, and every lab pod as a Running Pod object",
    )
    up.add_argument(
        "--netpol-model", action="store_true",
        help="kube mode: the Kubernetes e2e NetworkPolicy model (namespaces x, y, z; pods a, b, "
        "c serving TCP and UDP on 80 and 81) spread over the nodes; see lab probe",
    )
    up.add_argument("--keep", action="store_true", help="keep a lab that failed, for inspection")
    up.add_argument("--count", type=int, default=3, help="pings per matrix cell (default 3)")
    up.add_argument(
        "--ping-timeout", type=float, default=10.0, help="seconds per matrix cell (default 10)"
    )
    up.set_defaults(func=_lab_up)

    down = cmds.add_parser("down", help="remove every namespace, process and file of a lab")
    _add_prefix(down)
    down.set_defaults(func=_lab_down)

    status = cmds.add_parser("status", help="show a lab's nodes, leases and pods")
    _add_prefix(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=_lab_status)

    logs = cmds.add_parser("logs", help="print one node's flanneld log")
    logs.add_argument("node", help="node name, e.g. n1")
    _add_prefix(logs)
    logs.set_defaults(func=_lab_logs)

    doctor = cmds.add_parser(
        "doctor", help="run flannelctl doctor inside one node's namespace",
        description="Run flannelctl doctor in the node's namespace with that node's flanneld "
        "flags and CNI config directory; exits as doctor does.",
    )
    doctor.add_argument("node", help="node name, e.g. n1")
    _add_prefix(doctor)
    add_doctor_arguments(doctor)
    doctor.set_defaults(func=_lab_doctor)

    probe = cmds.add_parser(
        "probe", help="print the e2e model's 9x9 reachability matrix (lab up --netpol-model)",
        description="Connect from every model pod to every other one in parallel, as the "
        "Kubernetes e2e suite's probes do, and print the truth table.",
    )
    _add_prefix(probe)
    probe.add_argument("--port", type=int, default=80, help="destination port (default 80)")
    probe.add_argument("--protocol", choices=("tcp", "udp", "sctp"), default="tcp",
                       help="default tcp (sctp only where the kernel has it)")
    probe.add_argument("--timeout", type=float, default=1.0,
                       help="seconds per probe (default 1, as upstream's agnhost connect)")
    probe.add_argument("--json", action="store_true", help="print one JSON object")
    probe.set_defaults(func=_lab_probe)

    kubeconfig = cmds.add_parser(
        "kubeconfig", help="print a kubeconfig for the lab's API server (kube mode)",
        description="Print a kubeconfig (JSON, which is YAML) that reaches the lab's API "
        "server from this namespace through a loopback port, for kubectl or the Python client.",
    )
    _add_prefix(kubeconfig)
    kubeconfig.set_defaults(func=_lab_kubeconfig)


# --- netconf --------------------------------------------------------------------------


def _read_source(source: str) -> bytes:
    """The bytes of file ``source``, or of stdin for ``-``; ConfigError if unreadable."""
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        with open(source, "rb") as fh:
            return fh.read()
    except OSError as err:
        raise ConfigError(f"cannot read {source}: {err.strerror or err}") from err


def _netconf_validate(args: argparse.Namespace) -> int:
    try:
        report = check(_read_source(args.file), args.mode)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EXIT_FAILED
    print(describe(report))
    return EXIT_OK


def add_netconf_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    netconf = subparsers.add_parser("netconf", help="net-conf.json tools")
    cmds = netconf.add_subparsers(dest="netconf_command", required=True, metavar="COMMAND")
    validate = cmds.add_parser(
        "validate",
        help="check a net-conf.json as flanneld would and describe what it would use",
        description="Exit 0 and print what flanneld would use, or print the error and exit 1.",
    )
    validate.add_argument("file", metavar="FILE", help="the net-conf.json file, - for stdin")
    validate.add_argument(
        "--mode",
        choices=("kube", "etcd"),
        default="kube",
        help="subnet manager the daemon runs with (default kube; etcd also derives the "
        "node subnet ranges)",
    )
    validate.set_defaults(func=_netconf_validate)


# --- main -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flannelctl", description="pyflannel operator tool")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_doctor_commands(subparsers)
    add_lab_commands(subparsers)
    add_netconf_commands(subparsers)
    add_netpol_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Only doctor takes more: flanneld's own flags, handed to flanneld.flags as they are.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "flanneld_flags", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.func
    try:
        return handler(args)
    except FlannelError as err:
        print(f"flannelctl: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
