"""Attach pods the way a container runtime does: run the ``flannel`` CNI
plugin inside the node's namespace with CNI_* variables and the netconf on
stdin, and read its JSON result.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import subprocess
from collections.abc import Sequence
from typing import Any

from flanneld.lab.layout import LabPlan, NodePlan, PodPlan, cni_env, cni_netconf, node_paths
from flanneld.lab.topology import netns_argv
from subnet.errors import FlannelError

SYSTEM_CNI_DIR = "/usr/lib/cni"
PLUGIN_NAME = "flannel"
CNI_TIMEOUT = 30.0


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
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        **cni_env(plan, pod, command, cni_path(bin_dir)),
    }
    netconf = json.dumps(cni_netconf(plan, node))
    with open(node_paths(plan, node).cni_log, "ab") as errlog:
        try:
            done = subprocess.run(
                netns_argv(node.netns, [os.path.join(bin_dir, PLUGIN_NAME)]),
                input=netconf.encode(),
                stdout=subprocess.PIPE,
                stderr=errlog,
                env=env,
                timeout=CNI_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise FlannelError(f"CNI {command} for {pod.name} failed: {err}") from err
    out = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0:
        raise FlannelError(
            f"CNI {command} for {pod.name} exited {done.returncode}: {out or '(no output)'}"
        )
    if not out:
        return {}
    try:
        result = json.loads(out)
    except ValueError as err:
        raise FlannelError(f"CNI {command} for {pod.name} printed non-JSON: {out!r}") from err
    if not isinstance(result, dict):
        raise FlannelError(f"CNI {command} for {pod.name} printed {out!r}")
    return result


def result_ipv4(result: dict[str, Any]) -> ipaddress.IPv4Interface:
    """The first IPv4 address of a CNI ADD result."""
    for entry in result.get("ips", []):
        try:
            addr = ipaddress.ip_interface(str(entry.get("address", "")))
        except ValueError:
            continue
        if isinstance(addr, ipaddress.IPv4Interface):
            return addr
    raise FlannelError(f"CNI result has no IPv4 address: {json.dumps(result)}")
