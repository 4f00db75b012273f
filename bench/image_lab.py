"""Figures of the image and of the manifest's DaemonSet pod run by the lab.

    python3 bench/image_lab.py [--image localhost/pyflannel:dev] [--runs 10] [--restarts 3]

Builds nothing: the image must exist (bash scripts/build-image.sh).  Brings up a
two-node lab in image mode (prefix ``bimg``), then measures

* the image's size (podman image inspect);
* ``podman run`` of the flanneld container -> its readiness probe (``/readyz``) 200,
  over --restarts restarts of n1's container (SIGTERM, then the manifest's argv again);
* CNI ADD of the ``flannel`` plugin the install-cni-plugin init container put into n1's
  ``/opt/cni/bin``, with the conflist install-cni wrote (its first plugin, delegating to
  bridge + host-local), in the node's mount view, for --runs new pod namespaces; and
  the cost of that mount view alone (``true`` under the same wrapper), to subtract.

Writes bench/results/image_lab.json; the lab is torn down afterwards, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

from flanneld.lab import lab as labmod
from flanneld.lab import podrun, pods, topology
from flanneld.lab.layout import PodPlan, cni_env, node_paths

PREFIX = "bimg"
RESULTS = Path(__file__).resolve().parent / "results"


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 1)


def timed(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, input=stdin, capture_output=True, timeout=60,
                          check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[-1]} failed: {done.stdout!r} {done.stderr!r}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default="localhost/pyflannel:dev")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--restarts", type=int, default=3)
    args = parser.parse_args()
    size = subprocess.run(podrun.podman_argv(["image", "inspect", "--format", "{{.Size}}",
                                              args.image]),
                          capture_output=True, text=True, timeout=60, check=True).stdout
    lab = labmod.up(nodes=2, prefix=PREFIX, subnet_mgr="kube", image=args.image)
    try:
        ready: list[float] = []
        for _ in range(args.restarts):
            lab.kill_flanneld("n1", signal.SIGTERM)
            started = time.perf_counter()
            lab.start_flanneld("n1")
            ready.append(time.perf_counter() - started)
        node = lab.plan.node("n1")
        host_root = node_paths(lab.plan, node).host_root
        conf_dir = os.path.join(host_root, "etc", "cni", "net.d")
        name = pods.pick_config(os.listdir(conf_dir)) or ""
        with open(os.path.join(conf_dir, name), encoding="utf-8") as fh:
            first = pods.chain_plugins(name, json.load(fh))[0]
        plugin = os.path.join(pods.NODE_CNI_BIN, str(first["type"]))
        add: list[float] = []
        wrapper: list[float] = []
        for i in range(args.runs):
            pod = PodPlan(f"n1p{100 + i}", f"{PREFIX}-n1p{100 + i}", f"{PREFIX}-n1p{100 + i}")
            topology.create_netns(pod.netns)  # lab down removes it by name
            env = {"PATH": pods.NODE_PATH, **cni_env(lab.plan, pod, "ADD", pods.NODE_CNI_BIN)}
            argv = pods.host_view_argv(host_root, topology.netns_argv(node.netns, [plugin]))
            add.append(timed(argv, env, json.dumps(first).encode()))
            wrapper.append(timed(pods.host_view_argv(host_root, ["true"]), env))
    finally:
        labmod.down(PREFIX)
    result = {
        "image": args.image,
        "image_size_mb": round(int(size) / 1e6),
        "podman_run_to_readyz_s": [round(x, 2) for x in ready],
        "add_ms_median": median_ms(add),
        "mount_view_ms_median": median_ms(wrapper),
        "add_minus_mount_view_ms": round(median_ms(add) - median_ms(wrapper), 1),
        "runs": args.runs,
        "load_average": os.getloadavg()[0],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "image_lab.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
