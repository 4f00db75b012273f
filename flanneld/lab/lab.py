"""The multi-node lab: build it, inspect it, break it, tear it down.

:func:`up` builds a lab from a :class:`~flanneld.lab.layout.LabPlan`; every
namespace and process is written to the state file as soon as it exists,
so :func:`down` (in this or any later process, also after a crash) removes
exactly what the lab made.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backends.wireguard_go import running_pid, stop_recorded
from backends.wireguard_state import DEVICE as WIREGUARD_DEVICE
from backends.wireguard_state import DEVICE_V6 as WIREGUARD_DEVICE_V6
from flanneld.lab import (
    etcdgw,
    kubeapi,
    netpolmodel,
    netprobe,
    podrun,
    pods,
    podspec,
    procs,
    topology,
)
from flanneld.lab import state as statefile
from flanneld.lab.etcd import EtcdSpec
from flanneld.lab.kubeapi import DOOR_ROLE, KUBEAPI_ROLE, KubeApiControl
from flanneld.lab.layout import (
    CNI_CONFLIST,
    DEFAULT_PREFIX,
    ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
    HEALTHZ_PORT,
    KUBE_API_PORT,
    NODE_UNDERLAY_IF,
    POD_IF,
    UNDERLAY_BRIDGE,
    UNDERLAY_MTU,
    LabPlan,
    NodePlan,
    cni_conflist,
    flanneld_argv,
    flanneld_env,
    flanneld_launcher,
    is_lab_netns,
    make_plan,
    node_paths,
    state_dir,
)
from flanneld.lab.leases import (
    NodeLease,
    node_lease,
    node_lease_from_annotations,
    subnet_from_env,
)
from flanneld.lab.matrix import (
    Cell,
    Endpoint,
    PingJob,
    PingStats,
    matrix_jobs,
    ping_argv,
    run_ping,
    run_pings,
)
from flanneld.lab.state import LabState, ProcessRecord
from flanneld.lab.tls import ServerCert, make_server_cert
from subnet.errors import ConfigError, DataplaneError, FlannelError

log = logging.getLogger(__name__)

ETCD_ROLE = "etcd"
STORE_ROLES = (ETCD_ROLE, KUBEAPI_ROLE, DOOR_ROLE)  # stopped after every flanneld
READY_TIMEOUT = 60.0
ETCD_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
CONTAINER_STOP_TIMEOUT = 60.0
# Image mode reads the DaemonSet from here unless told otherwise (a checkout's manifest).
DEFAULT_MANIFEST = str(pathlib.Path(__file__).resolve().parents[2] / "manifests"
                       / "kube-flannel.yml")


@dataclass(frozen=True, slots=True)
class PodStatus:
    name: str
    ip: str | None


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    netns: str
    flanneld_pid: int | None  # None when flanneld is not running
    lease: NodeLease | None
    pods: tuple[PodStatus, ...]


@dataclass(frozen=True, slots=True)
class LabStatus:
    prefix: str
    backend: str
    etcd_running: bool
    nodes: tuple[NodeStatus, ...]
    subnet_mgr: str = "etcd"
    kubeapi_running: bool = False  # kube mode: the API double


@dataclass(frozen=True, slots=True)
class DownReport:
    stopped: tuple[str, ...]  # process roles that were still running
    namespaces: tuple[str, ...]  # namespaces removed
    state_removed: bool


def _flanneld_role(node: NodePlan) -> str:
    return f"flanneld-{node.name}"


def _child_env() -> dict[str, str]:
    """Our environment minus FLANNELD_* (the lab passes every flag explicitly)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def http_status(url: str) -> int | None:
    """The HTTP status of a GET of ``url`` (one second at most); None if it cannot connect."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (OSError, urllib.error.URLError):
        return None


def _pod_ip(netns: str) -> str | None:
    """The pod's address (IPv4, else IPv6 in an IPv6-only lab); None if it has none or its
    namespace is missing (half-built lab)."""
    try:
        v4 = topology.ipv4_addresses(netns, POD_IF)
        if v4:
            return str(v4[0].ip)
        v6 = topology.global_ipv6_addresses(netns, POD_IF)
    except DataplaneError:
        return None
    return str(v6[0].ip) if v6 else None


def log_tail(path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class Lab:
    """A running (or half-built) lab; create with :func:`up` or :meth:`attach`."""

    def __init__(self, state: LabState, python: str = sys.executable) -> None:
        self._state = state
        self._plan = state.plan()
        self._python = python
        self._manifest: podspec.Manifest | None = None
        if self._plan.image is not None:
            self._manifest = read_manifest(state.manifest or DEFAULT_MANIFEST)

    @classmethod
    def attach(cls, prefix: str = DEFAULT_PREFIX, python: str = sys.executable) -> Lab:
        """The lab recorded under ``prefix``; ConfigError if there is none."""
        recorded = statefile.load(state_dir(prefix))
        if recorded is None:
            raise ConfigError(f"no lab with prefix {prefix!r} (no state in {state_dir(prefix)})")
        return cls(recorded, python)

    @property
    def plan(self) -> LabPlan:
        return self._plan

    @property
    def _marker(self) -> str:
        """What a lab process's command line contains: a path inside the state dir."""
        return self._plan.state_dir + "/"

    @property
    def processes(self) -> dict[str, ProcessRecord]:
        """The processes the lab recorded, by role (``etcd``, ``flanneld-n1``...)."""
        return dict(self._state.processes)

    @property
    def bin_dir(self) -> str:
        return os.path.join(self._plan.state_dir, "bin")

    # --- bookkeeping -------------------------------------------------------------

    def _save(self, state: LabState) -> None:
        self._state = state
        statefile.save(self._plan.state_dir, state)

    def _make_netns(self, name: str) -> None:
        self._save(self._state.with_namespace(name))  # record first: down must find it
        topology.create_netns(name)

    def _record(self, role: str) -> ProcessRecord | None:
        return self._state.processes.get(role)

    # --- building ----------------------------------------------------------------

    def build(self) -> None:
        """Create namespaces, etcd, flanneld on every node, and the pods."""
        plan = self._plan
        self._save(self._state)
        self._build_underlay()
        for node in plan.nodes:
            self._build_node(node)
        if plan.kube:
            self._start_kubeapi()
        else:
            self._start_etcd()
            self._put_net_conf()
        if plan.image is not None:
            ignored = self.unhonoured
            if ignored:
                log.info("pod spec fields the lab does not honour: %s", ", ".join(ignored))
            for node in plan.nodes:
                self._start_pod(node)
        else:
            for node in plan.nodes:
                self._spawn_flanneld(node)
        for node in plan.nodes:
            self._wait_ready(node, READY_TIMEOUT)
        if plan.image is None:
            pods.write_plugin_wrapper(
                self.bin_dir, procs.launcher(self._python, "flannel", "cni.plugin")
            )
        for node in plan.nodes:
            for pod in node.pods:
                self._make_netns(pod.netns)
                result = (
                    pods.add_from_node_config(plan, node, pod) if plan.image is not None
                    else pods.run_plugin(plan, node, pod, "ADD", self.bin_dir)
                )
                log.info("pod %s on %s has %s", pod.name, node.name,
                         ", ".join(str(a) for a in pods.result_addresses(result)))
        if plan.network_policy or plan.netpol_model:
            self._register_pods()
        if plan.netpol_model:
            self._start_servers()

    # --- pods as API objects, the e2e NetworkPolicy model ------------------------

    @property
    def pod_objects(self) -> tuple[netpolmodel.LabPod, ...]:
        """The lab's pods as Kubernetes Pods (x/a... with --netpol-model)."""
        return netpolmodel.lab_pods(self._plan, self._plan.netpol_model)

    @property
    def model_pods(self) -> tuple[netpolmodel.LabPod, ...]:
        return tuple(p for p in self.pod_objects if p.in_model)

    def pod_ip(self, pod: netpolmodel.LabPod) -> str:
        ip = _pod_ip(pod.netns)
        if ip is None:
            raise FlannelError(f"pod {pod.key} ({pod.lab_pod}) has no address")
        return ip

    def _register_pods(self) -> None:
        """What the control plane and the kubelet would write: namespaces and Running Pods."""
        api = self.kube_api
        if self._plan.netpol_model:
            for name in netpolmodel.NAMESPACES:
                api.put_object(netpolmodel.namespace_object(name))
        for pod in self.pod_objects:
            host_ip = str(self._plan.node(pod.node).public_ip)
            api.put_object(netpolmodel.pod_object(pod, self.pod_ip(pod), host_ip,
                                                  netpolmodel.SERVED_PROTOCOLS))
            log.info("pod %s is %s on %s", pod.lab_pod, pod.key, pod.node)

    def _start_servers(self) -> None:
        """One server per model pod (TCP and UDP on 80 and 81), then wait until each answers."""
        ports = ",".join(str(p) for p in netpolmodel.SERVE_PORTS)
        for pod in self.model_pods:
            argv = [self._python, "-m", "flanneld.lab.podserver", f"--name={pod.key}",
                    f"--tcp={ports}", f"--udp={ports}", f"--lab={self._marker}"]
            log_path = os.path.join(self._plan.state_dir, f"server-{pod.lab_pod}.log")
            pid = procs.spawn(argv, log_path, pod.netns, _child_env())
            self._save(self._state.with_process(f"server-{pod.lab_pod}",
                                                ProcessRecord(pid, self._marker)))
        deadline = time.monotonic() + READY_TIMEOUT
        for pod in self.model_pods:
            while not netprobe.serving(pod.key, pod.netns, netpolmodel.SERVE_PORTS):
                if time.monotonic() > deadline:
                    raise FlannelError(f"the server of pod {pod.key} does not answer")
                time.sleep(0.1)

    def probe(self, port: int = 80, protocol: str = "tcp",
              timeout: float = netprobe.DEFAULT_TIMEOUT) -> list[netprobe.ProbeResult]:
        """The model's reachability matrix for one port and protocol (72 probes)."""
        if not self._plan.netpol_model:
            raise ConfigError(f"lab {self._plan.prefix} has no e2e model (lab up --netpol-model)")
        if protocol == "sctp":
            raise ConfigError(netprobe.sctp_error() or "SCTP: the lab's pod servers serve TCP "
                              "and UDP only")
        targets = [netprobe.Target(p.key, p.netns, self.pod_ip(p)) for p in self.model_pods]
        return netprobe.probe_matrix(targets, port, protocol, timeout)

    def _build_underlay(self) -> None:
        ul = self._plan.underlay_netns
        self._make_netns(ul)
        topology.add_bridge(ul, UNDERLAY_BRIDGE, UNDERLAY_MTU)
        topology.add_address(ul, UNDERLAY_BRIDGE, self._plan.gateway)
        if self._plan.gateway6 is not None:
            topology.add_address(ul, UNDERLAY_BRIDGE, self._plan.gateway6)

    def _build_node(self, node: NodePlan) -> None:
        ul = self._plan.underlay_netns
        self._make_netns(node.netns)
        topology.bridge_port(ul, UNDERLAY_BRIDGE, node.bridge_port,
                             node.netns, NODE_UNDERLAY_IF, node.address, UNDERLAY_MTU)
        topology.write_sysctl(node.netns, "net.ipv4.ip_forward", "1")
        if node.address6 is not None:
            topology.add_address(node.netns, NODE_UNDERLAY_IF, node.address6)
            topology.write_sysctl(node.netns, "net.ipv6.conf.all.forwarding", "1")
        paths = node_paths(self._plan, node)
        if self._plan.image is not None:
            # flanneld without --iface takes the default route's interface, as on a real node
            topology.add_default_route(node.netns, self._plan.gateway.ip)
            podrun.provision_node(paths.host_root)  # the init containers fill net.d
        else:
            os.makedirs(paths.cni_conf_dir, mode=0o755, exist_ok=True)
            with open(os.path.join(paths.cni_conf_dir, CNI_CONFLIST), "w", encoding="utf-8") as fh:
                json.dump(cni_conflist(self._plan, node), fh, indent=2)

    def _etcd_spec(self) -> EtcdSpec:
        return EtcdSpec(
            name=f"{self._plan.prefix}-etcd",
            data_dir=os.path.join(self._plan.state_dir, "etcd"),
            host=str(self._plan.gateway.ip),
            client_port=ETCD_CLIENT_PORT,
            peer_port=ETCD_PEER_PORT,
        )

    def _start_etcd(self) -> None:
        spec = self._etcd_spec()
        os.makedirs(spec.data_dir, mode=0o700, exist_ok=True)
        log_path = os.path.join(self._plan.state_dir, "etcd.log")
        pid = procs.spawn(spec.argv(), log_path, self._plan.underlay_netns)
        record = ProcessRecord(pid, self._marker)
        self._save(self._state.with_process(ETCD_ROLE, record))
        deadline = time.monotonic() + ETCD_TIMEOUT
        with self.etcd_gateway(timeout=1.0) as gateway:
            while not gateway.healthy():
                if not procs.is_ours(record):
                    raise FlannelError(f"etcd exited; last log lines:\n{log_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise FlannelError(f"etcd not healthy after {ETCD_TIMEOUT:g}s")
                time.sleep(0.05)

    def etcd_gateway(self, timeout: float = 5.0) -> etcdgw.EtcdGateway:
        """A client of the lab's etcd (etcd mode), connecting from the underlay namespace."""
        return etcdgw.EtcdGateway(
            self._plan.etcd_url, netns=self._plan.underlay_netns, timeout=timeout
        )

    @property
    def kube_api(self) -> KubeApiControl:
        """The API double's control client (kube mode)."""
        if not self._plan.kube:
            raise ConfigError(f"lab {self._plan.prefix} runs in etcd mode: no API double")
        return KubeApiControl(self._plan.kube_control)

    def _start_kubeapi(self) -> None:
        """The API double in the underlay namespace, one Node per lab node, their files."""
        plan = self._plan
        log_path = os.path.join(plan.state_dir, "kubeapi.log")
        tls = self._server_cert() if plan.image is not None else None
        pid = procs.spawn(kubeapi.double_argv(self._python, plan, tls), log_path,
                          plan.underlay_netns, _child_env())
        record = ProcessRecord(pid, self._marker)
        self._save(self._state.with_process(KUBEAPI_ROLE, record))
        try:
            self.kube_api.wait_up(ETCD_TIMEOUT, lambda: procs.is_ours(record))
        except FlannelError as err:
            raise FlannelError(f"{err}; last log lines:\n{log_tail(log_path)}") from err
        self._start_door()
        kubeapi.add_lab_nodes(plan, self.kube_api)
        if plan.image is None:
            kubeapi.write_node_files(plan, plan.net_conf())

    def _start_door(self) -> None:
        """The loopback door: root-namespace clients reach the double through it."""
        plan = self._plan
        log_path = os.path.join(plan.state_dir, "kubeapi-door.log")
        pid = procs.spawn(kubeapi.door_argv(self._python, plan), log_path, None, _child_env())
        record = ProcessRecord(pid, self._marker)
        self._save(self._state.with_process(DOOR_ROLE, record))
        deadline = time.monotonic() + ETCD_TIMEOUT
        while kubeapi.door_port(plan) is None:
            if not procs.is_ours(record) or time.monotonic() > deadline:
                raise FlannelError("the API double's loopback door did not start; last log "
                                   f"lines:\n{log_tail(log_path)}")
            time.sleep(0.05)

    def kubeconfig(self) -> dict[str, object]:
        """A kubeconfig for the API double usable from the root namespace (kube mode)."""
        port = kubeapi.door_port(self._plan) if self._plan.kube else None
        if port is None:
            raise ConfigError(f"lab {self._plan.prefix} has no API server (not kube mode)")
        if self._plan.image is None:
            return kubeapi.loopback_kubeconfig(self._plan, port)
        token = self.kube_api.issue_token("kube-system", "lab-admin")
        return kubeapi.loopback_kubeconfig(self._plan, port, self._server_cert_path, token)

    # --- image mode: the manifest's DaemonSet pod on each node --------------------

    def _server_cert(self) -> ServerCert:
        return make_server_cert(os.path.join(self._plan.state_dir, "tls"), self._plan.gateway.ip)

    def _pod_context(self, node: NodePlan) -> podspec.PodContext:
        paths = node_paths(self._plan, node)
        return podspec.PodContext(
            node_name=node.name,
            node_ip=str(node.public_ip),
            netns_path=topology.netns_path(node.netns),
            host_root=paths.host_root,
            pod_dir=paths.pod_dir,
            api_host=str(self._plan.gateway.ip),
            api_port=KUBE_API_PORT,
            container_prefix=f"{self._plan.prefix}-{node.name}",
            image=self._plan.image,
            ulimits=podrun.ulimits(),
        )

    def pod_run(self, node: str) -> podspec.PodRun:
        """What runs on ``node`` for the manifest's DaemonSet (image mode)."""
        if self._manifest is None:
            raise ConfigError(f"lab {self._plan.prefix} does not run an image")
        return podspec.pod_run(self._manifest, self._pod_context(self._plan.node(node)))

    @property
    def unhonoured(self) -> tuple[str, ...]:
        """The pod-spec fields the lab does not act on (image mode; else empty)."""
        if self._manifest is None:
            return ()
        return podspec.unhonoured(self._manifest.pod_spec)

    def _main_container(self, node: NodePlan) -> podspec.ContainerRun:
        mains = [c for c in self.pod_run(node.name).containers if not c.init]
        if len(mains) != 1:
            raise ConfigError(f"the lab runs pods with one container, not {len(mains)}")
        return mains[0]

    def _start_pod(self, node: NodePlan) -> None:
        """Register the pod, issue its token, write its files, run its init containers,
        then start its container (as the node's flanneld)."""
        run = self.pod_run(node.name)
        api = self.kube_api
        api.add_pod(run.namespace, run.pod_name, node.name)
        token = api.issue_token(run.namespace, run.service_account)
        podrun.prepare(run, token, self._server_cert_path)
        log_path = node_paths(self._plan, node).log
        for container in run.containers:
            if container.init:
                try:
                    podrun.run_init(container, log_path)
                except FlannelError as err:
                    raise FlannelError(f"{node.name}: {err}; last log lines:\n"
                                       + log_tail(log_path)) from err
        self._spawn_container(node)

    @property
    def _server_cert_path(self) -> str:
        return os.path.join(self._plan.state_dir, "tls", "apiserver.crt")

    def _spawn_container(self, node: NodePlan) -> ProcessRecord:
        main = self._main_container(node)
        pid = procs.spawn(podrun.podman_argv(main.argv), node_paths(self._plan, node).log,
                          None, _child_env())
        record = ProcessRecord(pid, self._marker)
        self._save(self._state.with_process(_flanneld_role(node), record))
        log.info("started container %s on %s (podman pid %d)", main.podman_name, node.name, pid)
        return record

    def _put_net_conf(self) -> None:
        with self.etcd_gateway() as gateway:
            gateway.put(f"{self._plan.etcd_prefix}/config", self._plan.net_conf())

    def _spawn_flanneld(self, node: NodePlan, extra_args: Sequence[str] = ()) -> ProcessRecord:
        launch = flanneld_launcher(node, procs.launcher(self._python, "flanneld", "flanneld.cli"))
        argv = [*flanneld_argv(launch, self._plan, node), *extra_args]
        env = {**_child_env(), **flanneld_env(self._plan, node)}
        pid = procs.spawn(argv, node_paths(self._plan, node).log, node.netns, env)
        record = ProcessRecord(pid, self._marker)
        self._save(self._state.with_process(_flanneld_role(node), record))
        log.info("started flanneld on %s as pid %d (%s)", node.name, pid, launch[0])
        return record

    def _ready(self, node: NodePlan) -> bool:
        if not os.path.exists(node_paths(self._plan, node).subnet_file):
            return False
        url = f"http://127.0.0.1:{HEALTHZ_PORT}/readyz"
        if self._plan.image is not None:  # the pod's readiness probe, as the kubelet runs it
            probe = self.pod_run(node.name).readiness
            if probe is None:
                return True
            url = f"http://{node.public_ip}:{probe.port}{probe.path}"
        return topology.run_in_netns(node.netns, lambda: http_status(url)) == 200

    def _wait_ready(self, node: NodePlan, timeout: float) -> None:
        record = self._record(_flanneld_role(node))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if record is None or not procs.is_ours(record):
                raise FlannelError(
                    f"flanneld on {node.name} is not running; last log lines:\n"
                    + log_tail(node_paths(self._plan, node).log)
                )
            if self._ready(node):
                return
            time.sleep(0.1)
        raise FlannelError(
            f"flanneld on {node.name} not ready after {timeout:g}s; last log lines:\n"
            + log_tail(node_paths(self._plan, node).log)
        )

    # --- inspecting --------------------------------------------------------------

    def _etcd_leases(self) -> dict[str, str]:
        with self.etcd_gateway() as gateway:
            return gateway.get_prefix(self._plan.etcd_prefix + "/subnets/")

    def subnet_env(self, node: str) -> str:
        """The text of ``node``'s subnet.env ('' if it does not exist)."""
        path = node_paths(self._plan, self._plan.node(node)).subnet_file
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def node_lease(self, node: str) -> NodeLease:
        """``node``'s lease: subnet from its subnet.env, the rest from etcd."""
        plan_node = self._plan.node(node)
        subnet = subnet_from_env(self.subnet_env(node), 4 if self._plan.ipv4 else 6)
        if subnet is None:
            raise FlannelError(f"node {plan_node.name} has no subnet in its subnet.env yet")
        if self._plan.kube:
            meta = self.kube_api.node(plan_node.name).get("metadata") or {}
            return node_lease_from_annotations(plan_node.name, subnet, meta.get("annotations") or {})
        if not isinstance(subnet, ipaddress.IPv4Network):  # etcd mode always leases IPv4
            raise FlannelError(f"node {plan_node.name} has no IPv4 subnet in its subnet.env")
        return node_lease(plan_node.name, subnet, self._plan.etcd_prefix, self._etcd_leases())

    def leases(self) -> list[NodeLease]:
        return [self.node_lease(node.name) for node in self._plan.nodes]

    def logs(self, node: str) -> str:
        """``node``'s flanneld log."""
        path = node_paths(self._plan, self._plan.node(node)).log
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def flanneld_pid(self, node: str) -> int | None:
        """The PID of ``node``'s flanneld if it is running."""
        record = self._record(_flanneld_role(self._plan.node(node)))
        return record.pid if record is not None and procs.is_ours(record) else None

    def doctor(
        self, node: str, args: Sequence[str] = (), capture: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``flannelctl doctor`` in ``node``'s namespace with its flanneld's flags.

        ``args`` are doctor's own options (``--json``, ``--timeout``).  With
        ``capture`` the output is returned, else it goes to our stdout.
        """
        plan_node = self._plan.node(node)
        paths = node_paths(self._plan, plan_node)
        flannelctl = procs.launcher(self._python, "flannelctl", "flanneld.ctl")
        flags = flanneld_argv([], self._plan, plan_node)
        argv = [*flannelctl, "doctor", *args, "--cni-conf-dir", paths.cni_conf_dir, "--", *flags]
        env = {**_child_env(), **flanneld_env(self._plan, plan_node)}
        try:
            return subprocess.run(
                topology.netns_argv(plan_node.netns, argv), capture_output=capture, text=True,
                env=env, timeout=timeout, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise FlannelError(f"flannelctl doctor on {node} failed: {err}") from err

    def endpoints(self) -> list[Endpoint]:
        """Every pod with its address, read from the pod's namespace."""
        found = []
        for _, pod in self._plan.pods():
            if self._plan.ipv4:
                addrs = topology.ipv4_addresses(pod.netns, POD_IF)
                if not addrs:
                    raise FlannelError(f"pod {pod.name} has no IPv4 address on {POD_IF}")
                found.append(Endpoint(pod.name, pod.netns, addrs[0].ip))
            if self._plan.ipv6:
                addrs6 = topology.global_ipv6_addresses(pod.netns, POD_IF)
                if not addrs6:
                    raise FlannelError(f"pod {pod.name} has no IPv6 address on {POD_IF}")
                found.append(Endpoint(pod.name, pod.netns, addrs6[0].ip))
        return found

    def status(self) -> LabStatus:
        etcd = self._record(ETCD_ROLE)
        etcd_running = etcd is not None and procs.is_ours(etcd)
        double = self._record(KUBEAPI_ROLE)
        kubeapi_running = double is not None and procs.is_ours(double)
        nodes = []
        for node in self._plan.nodes:
            lease: NodeLease | None = None
            if etcd_running or kubeapi_running:
                try:
                    lease = self.node_lease(node.name)
                except FlannelError as err:
                    log.warning("no lease for %s: %s", node.name, err)
            pod_status = tuple(PodStatus(pod.name, _pod_ip(pod.netns)) for pod in node.pods)
            nodes.append(
                NodeStatus(node.name, node.netns, self.flanneld_pid(node.name), lease, pod_status)
            )
        return LabStatus(
            self._plan.prefix, self._plan.backend, etcd_running, tuple(nodes),
            self._plan.subnet_mgr, kubeapi_running,
        )

    def matrix(self, count: int = 3, timeout: float = 10.0) -> list[Cell]:
        """Ping every pod from every other pod; each cell bounded by ``timeout`` seconds.

        With the wireguard backend, each node pair first gets one ping in one direction
        (:func:`_first_contacts`).
        """
        endpoints = self.endpoints()
        if self._plan.backend == "wireguard":
            run_pings(_first_contacts(endpoints, timeout), timeout=timeout + 2.0)
        jobs = matrix_jobs(endpoints, count, interval=0.2, deadline=timeout)
        return run_pings(jobs, timeout=timeout + 2.0)

    def ping(
        self, src: str, dst: str, count: int, interval: float = 0.2, timeout: float = 30.0,
        family: int | None = None,
    ) -> PingStats:
        """``count`` pings from pod ``src`` to pod ``dst`` (no retries: losses show), to its
        address of IP version ``family`` (default: its first, IPv4 unless IPv6-only)."""
        by_name: dict[str, Endpoint] = {}
        for ep in self.endpoints():
            if family is None or ep.ip.version == family:
                by_name.setdefault(ep.name, ep)
        if src not in by_name or dst not in by_name:
            raise ConfigError(f"unknown pod {src if src not in by_name else dst!r}")
        argv = ping_argv(by_name[dst].ip, count, interval, deadline=None)
        return run_ping(by_name[src].netns, argv, timeout)

    # --- breaking ----------------------------------------------------------------

    def kill_flanneld(self, node: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to ``node``'s flanneld; for SIGKILL/SIGTERM wait until it is gone."""
        plan_node = self._plan.node(node)
        role = _flanneld_role(plan_node)
        record = self._record(role)
        if record is None or not procs.is_ours(record):
            raise FlannelError(f"flanneld on {node} is not running")
        if self._plan.image is not None:  # the container's process, not the podman client
            podrun.kill(self._main_container(plan_node).podman_name, sig)
        elif not procs.signal_process(record, sig):
            raise FlannelError(f"flanneld on {node} is not running")
        if sig in (signal.SIGKILL, signal.SIGTERM):
            # podman exits once the container is gone: its --rm takes a while under load
            patience = CONTAINER_STOP_TIMEOUT if self._plan.image is not None else STOP_TIMEOUT * 2
            if not procs.wait_gone(record, patience):
                raise FlannelError(f"flanneld on {node} (pid {record.pid}) did not exit")
            self._save(self._state.without_process(role))

    def start_flanneld(
        self,
        node: str,
        timeout: float = READY_TIMEOUT,
        extra_args: Sequence[str] = (),
        wait: bool = True,
    ) -> int:
        """(Re)start ``node``'s flanneld and (if ``wait``) wait until it is ready; its PID.

        ``extra_args`` follow the lab's own flags, so they override them.
        """
        plan_node = self._plan.node(node)
        if self.flanneld_pid(plan_node.name) is not None:
            raise FlannelError(f"flanneld on {node} is already running")
        if self._plan.image is not None:
            if extra_args:
                raise ConfigError("image mode runs the manifest's arguments, no extra ones")
            record = self._spawn_container(plan_node)
        else:
            record = self._spawn_flanneld(plan_node, extra_args)
        if wait:
            self._wait_ready(plan_node, timeout)
        return record.pid

    def wireguard_go_pid(self, node: str, device: str = WIREGUARD_DEVICE) -> int | None:
        """The PID of ``node``'s wireguard-go for ``device`` (wireguard backend, userspace
        driver; ``flannel-wg-v6`` serves IPv6 in the default dual-stack mode) if it runs."""
        root = node_paths(self._plan, self._plan.node(node)).root
        return running_pid(root, device)

    def etcd_pid(self) -> int | None:
        """The PID of the lab's etcd if it is running."""
        record = self._record(ETCD_ROLE)
        return record.pid if record is not None and procs.is_ours(record) else None

    def stop_etcd(self, sig: int = signal.SIGKILL) -> None:
        """End the lab's etcd with ``sig`` (by its PID) and wait until it is gone."""
        record = self._record(ETCD_ROLE)
        if record is None or not procs.signal_process(record, sig):
            raise FlannelError("the lab's etcd is not running")
        if not procs.wait_gone(record, STOP_TIMEOUT * 2):
            raise FlannelError(f"etcd (pid {record.pid}) did not exit")
        self._save(self._state.without_process(ETCD_ROLE))

    def start_etcd(self) -> int:
        """Start the lab's etcd again on its data dir and wait until it is healthy; its PID."""
        if self.etcd_pid() is not None:
            raise FlannelError("the lab's etcd is already running")
        self._start_etcd()
        pid = self.etcd_pid()
        if pid is None:
            raise FlannelError("etcd exited right after start")
        return pid

    def down(self) -> DownReport:
        return down(self._plan.prefix)


def read_manifest(path: str) -> podspec.Manifest:
    """The manifest at ``path``; ConfigError if it cannot be read or has no DaemonSet."""
    try:
        with open(path, encoding="utf-8") as fh:
            return podspec.load_manifest(fh.read())
    except OSError as err:
        raise ConfigError(f"cannot read the manifest: {err}") from err


def up(
    nodes: int = 3,
    backend: str = "vxlan",
    pods_per_node: int = 1,
    prefix: str = DEFAULT_PREFIX,
    python: str = sys.executable,
    subnet_mgr: str = "etcd",
    image: str | None = None,
    manifest: str | None = None,
    flanneld: Mapping[str, str] | None = None,
    network_policy: bool = False,
    netpol_model: bool = False,
    ip_family: str = "ipv4",
) -> Lab:
    """Build a lab and return it; ConfigError if one with ``prefix`` exists.

    On failure the half-built lab is left in place (and in the state file)
    for inspection; :func:`down` removes it.  ``subnet_mgr="kube"`` runs
    every flanneld with ``--kube-subnet-mgr`` against the Kubernetes API
    double (:mod:`flanneld.lab.apiserver`, run by :mod:`flanneld.lab.kubeapi`).
    With ``image``, each node runs the ``manifest``'s DaemonSet pod from that
    image with podman instead (:mod:`flanneld.lab.podspec`); the backend is
    the one in the manifest's net-conf.json.  ``network_policy`` runs flanneld
    with ``--network-policy`` and writes every lab pod into the API double as
    a Running Pod; ``netpol_model`` lays the e2e model (namespaces x, y, z,
    pods a, b, c, servers on ports 80 and 81) over the first nine pods, adding
    pods per node as needed (:mod:`flanneld.lab.netpolmodel`).  ``flanneld``
    maps node names to another flanneld binary (e.g. upstream's) those nodes
    run with the same upstream flags: a mixed cluster.
    """
    if netpol_model:
        pods_per_node = max(pods_per_node, netpolmodel.pods_per_node(nodes))
    binaries = dict(flanneld or {})
    plan = make_plan(prefix, nodes, pods_per_node, backend, subnet_mgr=subnet_mgr, image=image,
                     network_policy=network_policy, netpol_model=netpol_model,
                     flanneld=binaries, ip_family=ip_family)
    for node, path in binaries.items():
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise ConfigError(f"--flanneld {node}={path}: not an executable file")
    if image is not None:
        manifest = os.path.abspath(manifest or DEFAULT_MANIFEST)
        in_manifest = podspec.net_conf_backend(read_manifest(manifest))
        if in_manifest is not None and in_manifest != backend:
            raise ConfigError(f"the manifest's net-conf.json uses backend {in_manifest}, not "
                              f"{backend}: edit its ConfigMap to change it")
        podrun.check_image(image)
    if os.path.exists(statefile.state_path(plan.state_dir)) or _lab_namespaces(prefix):
        raise ConfigError(
            f"a lab with prefix {prefix!r} exists; run: flannelctl lab down --prefix {prefix}"
        )
    lab = Lab(LabState(prefix, nodes, pods_per_node, backend, subnet_mgr=subnet_mgr,
                       image=image, manifest=manifest, network_policy=network_policy,
                       netpol_model=netpol_model, flanneld=binaries, ip_family=ip_family),
              python)
    lab.build()
    return lab


def _lab_namespaces(prefix: str) -> list[str]:
    return [name for name in topology.list_netns() if is_lab_netns(prefix, name)]


def _deletion_order(name: str) -> tuple[int, str]:
    """Pods first, then nodes, the underlay last."""
    tail = name.rsplit("-", 1)[-1]
    rank = 2 if tail == "ul" else (0 if "p" in tail else 1)
    return rank, name


def _first_contacts(endpoints: Sequence[Endpoint], timeout: float) -> list[PingJob]:
    """One ping per node pair and address family, from one end only.

    A WireGuard handshake that both ends start at the same instant fails on
    both (each answers the other's initiation and then drops the answer to its
    own) and is retried 5 s later, when it may cross again.  The matrix pings
    every pair both ways at once, so a fresh lab's tunnels are opened one way first.
    """
    first: dict[tuple[str, int], Endpoint] = {}
    for ep in endpoints:
        first.setdefault((ep.name.rsplit("p", 1)[0], ep.ip.version), ep)
    return [
        PingJob(src, dst, ping_argv(dst.ip, 1, 0.2, timeout), 1)
        for (node, version), src in first.items()
        for (other, version2), dst in first.items()
        if version == version2 and node < other
    ]


def _stop_wireguard_go(directory: str) -> list[str]:
    """End each node's wireguard-go (flanneld leaves it running across restarts), by PID."""
    stopped = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
        root = os.path.join(directory, name)
        for device in (WIREGUARD_DEVICE, WIREGUARD_DEVICE_V6) if os.path.isdir(root) else ():
            if stop_recorded(root, device) is not None:
                stopped.append(f"wireguard-go-{name}" + ("-v6" if device != WIREGUARD_DEVICE else ""))
    return stopped


def down(prefix: str = DEFAULT_PREFIX) -> DownReport:
    """Remove every process, namespace and file of lab ``prefix``; safe to repeat.

    Processes come from the state file (and are signalled only while still
    ours); namespaces from the state file plus any following the lab's
    naming scheme (a crash may have happened before the state was written).
    """
    directory = state_dir(prefix)
    recorded: LabState | None
    try:
        recorded = statefile.load(directory)
    except ConfigError as err:
        log.warning("ignoring unreadable lab state: %s", err)
        recorded = None
    stopped: list[str] = []
    if recorded is not None:
        # Every flanneld first, the store last, so no daemon spins on a vanished store.
        for group in (
            {r: p for r, p in recorded.processes.items() if r not in STORE_ROLES},
            {r: p for r, p in recorded.processes.items() if r in STORE_ROLES},
        ):
            done = procs.stop(list(group.values()), STOP_TIMEOUT)
            stopped += [role for role, rec in group.items() if rec in done]
    if recorded is None or recorded.image is not None:
        stopped += [f"container {name}" for name in podrun.remove_containers(prefix)]
    stopped += _stop_wireguard_go(directory)
    names = set(_lab_namespaces(prefix))
    if recorded is not None:
        names |= {n for n in recorded.namespaces if is_lab_netns(prefix, n)}
    removed = [n for n in sorted(names, key=_deletion_order) if topology.delete_netns(n)]
    state_removed = os.path.isdir(directory)
    shutil.rmtree(directory, ignore_errors=True)
    return DownReport(tuple(stopped), tuple(removed), state_removed)
