"""Attach pods the way a container runtime does: run the ``flannel`` CNI
plugin inside the node's namespace with CNI_* variables and the netconf on
stdin, and read its JSON result.

In image mode the runtime's view is the node's own: the conflist comes from
the node's ``/etc/cni/net.d`` and the plugins from its ``/opt/cni/bin``, both
as the DaemonSet's init containers left them, and each plugin of the chain
runs in a private mount namespace where ``/run`` and ``/var/lib/cni`` are the
node's (so the plugin's built-in ``/run/flannel/subnet.env`` is that node's).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flanneld.lab.layout import LabPlan, NodePlan, PodPlan, cni_env, cni_netconf, node_paths
from flanneld.lab.topology import netns_argv
from subnet.errors import FlannelError

SYSTEM_CNI_DIR = "/usr/lib/cni"
PLUGIN_NAME = "flannel"
CNI_TIMEOUT = 30.0
CONFIG_EXTENSIONS = (".conf", ".conflist", ".json")  # what libcni reads from a config dir
# Run by sh in a fresh private mount namespace: the node's var/lib/cni, opt/cni/bin and
# run/ (with the host's netns mounts inside) become /var/lib/cni, /opt/cni/bin and /run
# (the last, as the node's directories may live under /run), then exec.
_HOST_VIEW = (
    'set -e; root=$1; shift; '
    'mkdir -p /var/lib/cni; mount --bind "$root/var/lib/cni" /var/lib/cni; '
    'mount -t tmpfs -o mode=0755 node-opt /opt; mkdir -p /opt/cni/bin; '
    'mount --bind "$root/opt/cni/bin" /opt/cni/bin; '
    'mount --rbind /run/netns "$root/run/netns"; mount --rbind "$root/run" /run; exec "$@"'
)
NODE_CNI_BIN = "/opt/cni/bin"  # where the runtime finds plugins, in that view
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def write_plugin_wrapper(bin_dir: str, launcher: Sequence[str]) -> str:
    """Put an executable ``flannel`` into ``bin_dir`` that execs ``launcher``.

    A runtime finds plugins by name on CNI_PATH; the wrapper makes the
    plugin of this very interpreter (venv or not) the one that is found.
    """
    os.makedirs(bin_dir, mode=0o755, exist_ok=True)
    path = os.path.join(bin_dir, PLUGIN_NAME)
    words = " ".join(shlex.quote(word) for word in launcher)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"#!/bin/sh\nexec {words} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def cni_path(bin_dir: str) -> str:
    return f"{bin_dir}:{SYSTEM_CNI_DIR}"


def run_plugin(
    plan: LabPlan, node: NodePlan, pod: PodPlan, command: str, bin_dir: str
) -> dict[str, Any]:
    """Invoke the plugin for ``pod`` with CNI_COMMAND=``command``; its result (or {})."""
    env = _plugin_env(cni_env(plan, pod, command, cni_path(bin_dir)))
    argv = netns_argv(node.netns, [os.path.join(bin_dir, PLUGIN_NAME)])
    return _invoke(argv, cni_netconf(plan, node), env, node_paths(plan, node).cni_log,
                   f"CNI {command} for {pod.name}")


def pick_config(names: Iterable[str]) -> str | None:
    """The file a runtime takes from its CNI config dir: the first by name, as libcni."""
    found = sorted(name for name in names if name.endswith(CONFIG_EXTENSIONS))
    return found[0] if found else None


def chain_plugins(name: str, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The netconf of each plugin in a config file, in order, without prevResult."""
    if not name.endswith(".conflist"):
        return [dict(doc)]  # a single-plugin .conf/.json
    plugins = doc.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise FlannelError(f"CNI config {name} has no plugins")
    return [{**plugin, "name": doc.get("name"), "cniVersion": doc.get("cniVersion")}
            for plugin in plugins]


def host_view_argv(host_root: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run where /run and /var/lib/cni are those under ``host_root``."""
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", _HOST_VIEW, "sh", host_root, *argv]


def add_from_node_config(plan: LabPlan, node: NodePlan, pod: PodPlan) -> dict[str, Any]:
    """ADD ``pod`` with the node's own CNI config and plugins (image mode); the result."""
    paths = node_paths(plan, node)
    conf_dir = paths.cni_conf_dir
    try:
        name = pick_config(os.listdir(conf_dir))
    except OSError as err:
        raise FlannelError(f"node {node.name}: {err}") from err
    if name is None:
        raise FlannelError(f"node {node.name}: no CNI config in {conf_dir} "
                           "(the install-cni init container writes it)")
    try:
        with open(os.path.join(conf_dir, name), encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as err:
        raise FlannelError(f"node {node.name}: CNI config {name}: {err}") from err
    env = {"PATH": NODE_PATH, **cni_env(plan, pod, "ADD", NODE_CNI_BIN)}
    result: dict[str, Any] | None = None
    for netconf in chain_plugins(name, doc):
        if result is not None:
            netconf["prevResult"] = result
        plugin = os.path.join(NODE_CNI_BIN, str(netconf.get("type")))
        argv = host_view_argv(paths.host_root, netns_argv(node.netns, [plugin]))
        result = _invoke(argv, netconf, env, paths.cni_log,
                         f"CNI ADD ({netconf.get('type')}) for {pod.name}")
    return result or {}


def _plugin_env(cni: Mapping[str, str]) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **cni}


def _invoke(argv: list[str], netconf: Mapping[str, Any], env: Mapping[str, str],
            log_path: str, what: str) -> dict[str, Any]:
    """Run one plugin with ``netconf`` on stdin; its JSON result (or {})."""
    with open(log_path, "ab") as errlog:
        try:
            done = subprocess.run(
                argv,
                input=json.dumps(netconf).encode(),
                stdout=subprocess.PIPE,
                stderr=errlog,
                env=env,
                timeout=CNI_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise FlannelError(f"{what} failed: {err}") from err
    out = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0:
        raise FlannelError(f"{what} exited {done.returncode}: {out or '(no output)'}")
    if not out:
        return {}
    try:
        result = json.loads(out)
    except ValueError as err:
        raise FlannelError(f"{what} printed non-JSON: {out!r}") from err
    if not isinstance(result, dict):
        raise FlannelError(f"{what} printed {out!r}")
    return result


def result_addresses(
    result: dict[str, Any],
) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Every address of a CNI ADD result, in its order."""
    found = []
    for entry in result.get("ips", []):
        try:
            found.append(ipaddress.ip_interface(str(entry.get("address", ""))))
        except ValueError:
            continue
    return found


def result_ipv4(result: dict[str, Any]) -> ipaddress.IPv4Interface:
    """The first IPv4 address of a CNI ADD result."""
    for addr in result_addresses(result):
        if isinstance(addr, ipaddress.IPv4Interface):
            return addr
    raise FlannelError(f"CNI result has no IPv4 address: {json.dumps(result)}")
