"""Run a DaemonSet's pod on a lab node with podman, as a kubelet would (image mode).

:mod:`flanneld.lab.podspec` decides what to run; this module does it: it
creates the pod's host paths and files, writes the service-account token the
lab's API double issued, runs the init containers one after the other (each
must exit 0) and gives the lab the main container's command line to start
detached.  Containers are named ``<lab prefix>-<node>-<container>`` so
``lab down`` finds leftovers by name, as it does namespaces.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import shutil
import subprocess
from collections.abc import Sequence

from flanneld.lab.podspec import ContainerRun, PodRun
from subnet.errors import FlannelError

log = logging.getLogger(__name__)

# podman's default OCI runtime here (crun 1.8) refuses hybrid cgroup hierarchies; runc
# runs on those and on cgroup v2 alike.
PODMAN = ("podman", "--runtime", "runc")
# podman lowers its own RLIMIT_NPROC to this before it starts the runtime, so a container
# cannot be given more; without CAP_SYS_RESOURCE (as in some VMs) nothing can be raised.
PODMAN_NPROC = 32768
INIT_TIMEOUT = 120.0
PODMAN_TIMEOUT = 60.0
SYSTEM_CNI_DIR = "/usr/lib/cni"
# What a node's /opt/cni/bin holds before the DaemonSet runs: the distribution's plugins.
NODE_CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")


def podman_argv(args: Sequence[str]) -> list[str]:
    return [*PODMAN, *args]


def ulimits() -> tuple[tuple[str, int], ...]:
    """The limits every container gets: ours (a runtime cannot raise them here)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    if nproc == resource.RLIM_INFINITY or nproc > PODMAN_NPROC:
        nproc = PODMAN_NPROC
    return (("nofile", nofile), ("nproc", nproc))


def _podman(args: Sequence[str], timeout: float = PODMAN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(podman_argv(args), capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FlannelError(f"podman {args[0]}: {err}") from err


def check_image(image: str) -> None:
    """FlannelError unless podman has ``image`` locally (the lab never pulls)."""
    if shutil.which(PODMAN[0]) is None:
        raise FlannelError("podman is not installed; run: bash scripts/install.sh --image")
    if _podman(["image", "exists", image]).returncode != 0:
        raise FlannelError(f"podman has no image {image}; build it: bash scripts/build-image.sh")


def provision_node(host_root: str) -> None:
    """A node's host paths before the DaemonSet runs: the distribution's CNI plugins in
    /opt/cni/bin, and /var/lib/cni and /run/netns for the runtime's view of the node."""
    bin_dir = os.path.join(host_root, "opt", "cni", "bin")
    for directory in (bin_dir, os.path.join(host_root, "var", "lib", "cni"),
                      os.path.join(host_root, "run", "netns")):
        os.makedirs(directory, mode=0o755, exist_ok=True)
    for plugin in NODE_CNI_PLUGINS:
        target = os.path.join(bin_dir, plugin)
        if not os.path.lexists(target):
            os.symlink(os.path.join(SYSTEM_CNI_DIR, plugin), target)


def _write(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def prepare(run: PodRun, token: str, ca_cert: str) -> None:
    """Create the pod's host paths, ConfigMap files and service-account files."""
    for entry in run.host_paths:
        if os.path.exists(entry.path):
            if os.path.isdir(entry.path) != entry.directory:
                kind = "a directory" if entry.directory else "a file"
                raise FlannelError(f"hostPath {entry.path} is not {kind}")
            continue
        if not entry.create:
            raise FlannelError(f"hostPath {entry.path} does not exist")
        if entry.directory:
            os.makedirs(entry.path, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(entry.path), mode=0o755, exist_ok=True)
            with open(entry.path, "a", encoding="utf-8"):
                pass
    for item in run.files:
        _write(item.path, item.text, item.mode)
    if run.token_dir is not None:
        with open(ca_cert, encoding="utf-8") as fh:
            ca = fh.read()
        _write(os.path.join(run.token_dir, "token"), token, 0o600)
        _write(os.path.join(run.token_dir, "ca.crt"), ca, 0o644)
        _write(os.path.join(run.token_dir, "namespace"), run.namespace, 0o644)


def run_init(container: ContainerRun, log_path: str, timeout: float = INIT_TIMEOUT) -> None:
    """Run an init container to completion; its output goes to ``log_path``."""
    with open(log_path, "ab") as out:
        out.write(f"--- init container {container.name}\n".encode())
        out.flush()
        try:
            done = subprocess.run(podman_argv(container.argv), stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise FlannelError(f"init container {container.name}: {err}") from err
    if done.returncode != 0:
        raise FlannelError(f"init container {container.name} exited {done.returncode}")
    log.info("init container %s done", container.name)


def is_lab_container(prefix: str, name: str) -> bool:
    """Whether podman container ``name`` follows lab ``prefix``'s naming scheme."""
    return re.fullmatch(re.escape(prefix) + r"-n\d+-[a-z0-9][-a-z0-9]*", name) is not None


def kill(name: str, sig: int) -> None:
    """Send ``sig`` to container ``name``'s main process (as a kubelet's runtime would)."""
    done = _podman(["kill", f"--signal={sig}", name])
    if done.returncode != 0:
        raise FlannelError(f"podman kill {name}: {done.stderr.strip()}")


def remove_containers(prefix: str) -> list[str]:
    """Force-remove every container of lab ``prefix``; their names."""
    if shutil.which(PODMAN[0]) is None:
        return []
    listed = _podman(["ps", "--all", "--format", "{{.Names}}"])
    names = [n for n in listed.stdout.split() if is_lab_container(prefix, n)]
    if names:
        _podman(["rm", "--force", "--time=0", *names])
    return names
