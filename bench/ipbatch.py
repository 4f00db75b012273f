"""The physical limit: the same kernel objects programmed by ``ip -batch`` / ``bridge -batch``.

In a namespace of its own (``<prefix>-ipb``: a veth underlay and
``flannel.1`` as flanneld creates it), each peer's permanent neighbour,
``self`` FDB entry and onlink route (protocol 44) are written by iproute2
reading one batch file per tool; the seconds from the first tool's start
to the last one's exit are what the kernel plus iproute2 need for them.
The namespace is deleted afterwards, also on failure.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Sequence

from nsthread import NODE_IP
from peer_leases import Peer

from flanneld.lab.topology import create_netns, delete_netns

DEVICE = "flannel.1"


def ip_batch_seconds(prefix: str, peers: Sequence[Peer]) -> float:
    """Seconds ``bridge -batch`` (FDB) plus ``ip -batch`` (neighbours, routes) take for ``peers``."""
    ns = f"{prefix}-ipb"
    create_netns(ns)
    try:
        for argv in (
            ["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"],
            ["addr", "add", f"{NODE_IP}/24", "dev", "ul0"],
            ["link", "set", "ul0", "up"],
            ["link", "add", DEVICE, "type", "vxlan", "id", "1", "dev", "ul0", "local", NODE_IP,
             "dstport", "8472", "nolearning"],
            ["link", "set", DEVICE, "up"],
        ):
            subprocess.run(["ip", "-n", ns, *argv], check=True)
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-ipb-") as tmp:
            fdb, ip = os.path.join(tmp, "fdb"), os.path.join(tmp, "ip")
            with open(fdb, "w", encoding="ascii") as fh:
                fh.writelines(f"fdb replace {p.mac} dev {DEVICE} dst {p.public_ip} self permanent\n"
                              for p in peers)
            with open(ip, "w", encoding="ascii") as fh:
                fh.writelines(f"neigh replace {p.gateway} lladdr {p.mac} dev {DEVICE} "
                              "nud permanent\n" for p in peers)
                fh.writelines(f"route replace {p.subnet} via {p.gateway} dev {DEVICE} onlink "
                              "proto 44\n" for p in peers)
            started = time.monotonic()
            subprocess.run(["bridge", "-n", ns, "-batch", fdb], check=True)
            subprocess.run(["ip", "-n", ns, "-batch", ip], check=True)
            return time.monotonic() - started
    finally:
        delete_netns(ns)
