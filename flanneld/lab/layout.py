"""The lab's layout as pure data: names, addresses, ports, paths, argv.

Nothing here touches the system.  Every name a lab creates derives from
its ``prefix``, so a lab (or a crashed lab) is recognisable by name alone::

    <prefix>-ul          underlay namespace: bridge ul0 198.18.0.1/24, etcd
                         (or, in kube mode, the Kubernetes API double)
    <prefix>-n<i>        node i: veth ul0 198.18.0.(10+i)/24, flanneld
    <prefix>-n<i>p<j>    pod j on node i, attached by the CNI plugin

198.18.0.0/15 is the RFC 2544 benchmark range; these addresses exist only
inside the lab's namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from subnet.errors import ConfigError

STATE_ROOT = "/run/pyflannel-lab"
DEFAULT_PREFIX = "pfl"
DEFAULT_ETCD_PREFIX = "/coreos.com/network"
DEFAULT_NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
DEFAULT_NETWORK6 = ipaddress.IPv6Network("fd00:10:244::/56")  # kind's dual-stack pod range
UNDERLAY = ipaddress.IPv4Network("198.18.0.0/24")
UNDERLAY6 = ipaddress.IPv6Network("fd00:198:18::/64")  # a ULA twin of UNDERLAY
UNDERLAY_BRIDGE = "ul0"
NODE_UNDERLAY_IF = "ul0"
POD_IF = "eth0"
UNDERLAY_MTU = 1500
ETCD_CLIENT_PORT = 12379
ETCD_PEER_PORT = 12380
HEALTHZ_PORT = 18081
CNI_NETWORK_NAME = "cbr0"
CNI_VERSION = "1.0.0"
FIRST_NODE_HOST = 10  # node i gets .(10+i)
MAX_NODES = 240
MAX_PODS_PER_NODE = 32
IFNAMSIZ = 15  # longest Linux interface name
BACKENDS = ("vxlan", "host-gw", "udp", "wireguard")
SUBNET_MGRS = ("etcd", "kube")
IP_FAMILIES = ("ipv4", "ipv6", "dual")
KUBE_API_PORT = 16443

_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,11}")


@dataclass(frozen=True, slots=True)
class PodPlan:
    """One pod: a namespace attached to its node by the CNI plugin."""

    name: str  # n1p1
    netns: str  # <prefix>-n1p1
    container_id: str


@dataclass(frozen=True, slots=True)
class NodePlan:
    """One node: a namespace with an underlay veth and one flanneld."""

    name: str  # n1
    index: int
    netns: str  # <prefix>-n1
    bridge_port: str  # the veth end on the underlay bridge, in <prefix>-ul
    address: ipaddress.IPv4Interface
    pods: tuple[PodPlan, ...]
    flanneld: str | None = None  # another flanneld binary (e.g. upstream's), else ours
    address6: ipaddress.IPv6Interface | None = None  # dual stack: the underlay IPv6 address

    @property
    def public_ip(self) -> ipaddress.IPv4Address:
        return self.address.ip


@dataclass(frozen=True, slots=True)
class LabPlan:
    """The whole lab, derived from (prefix, nodes, pods per node, backend)."""

    prefix: str
    backend: str
    network: ipaddress.IPv4Network
    etcd_prefix: str
    underlay_netns: str
    gateway: ipaddress.IPv4Interface
    nodes: tuple[NodePlan, ...]
    subnet_mgr: str = "etcd"  # or "kube": Node objects in the API double
    image: str | None = None  # kube mode: flanneld runs as the manifest's pod, from this image
    network_policy: bool = False  # kube mode: flanneld --network-policy, pods as Pod objects
    netpol_model: bool = False  # the e2e model: namespaces x, y, z with pods a, b, c and servers
    # "dual": an IPv6 underlay and IPv6Network too; "ipv6": IPv6Network only (the
    # underlay keeps its IPv4 addresses for the API server, as a real control plane may)
    ip_family: str = "ipv4"
    gateway6: ipaddress.IPv6Interface | None = None  # dual: the underlay bridge's IPv6 address

    @property
    def ipv4(self) -> bool:
        """Whether the cluster runs IPv4 (EnableIPv4)."""
        return self.ip_family != "ipv6"

    @property
    def ipv6(self) -> bool:
        """Whether the cluster runs IPv6 (EnableIPv6)."""
        return self.ip_family != "ipv4"

    @property
    def state_dir(self) -> str:
        return state_dir(self.prefix)

    @property
    def kube(self) -> bool:
        return self.subnet_mgr == "kube"

    @property
    def kube_api_url(self) -> str:
        scheme = "https" if self.image else "http"
        return f"{scheme}://{self.gateway.ip}:{KUBE_API_PORT}"

    @property
    def kube_control(self) -> str:
        """The API double's control socket (kube mode)."""
        return os.path.join(self.state_dir, "kubeapi.sock")

    @property
    def etcd_url(self) -> str:
        return f"http://{self.gateway.ip}:{ETCD_CLIENT_PORT}"

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if name in (node.name, node.netns):
                return node
        raise ConfigError(f"lab {self.prefix} has no node {name!r}")

    def pods(self) -> tuple[tuple[NodePlan, PodPlan], ...]:
        return tuple((node, pod) for node in self.nodes for pod in node.pods)

    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the lab, pods first (the order to delete them in)."""
        pods = tuple(pod.netns for _, pod in self.pods())
        return pods + tuple(n.netns for n in self.nodes) + (self.underlay_netns,)

    def net_conf(self) -> str:
        """The ``<etcd prefix>/config`` value."""
        conf: dict[str, object] = (
            {"Network": str(self.network)} if self.ipv4 else {"EnableIPv4": False}
        )
        if self.ipv6:
            conf.update(EnableIPv6=True, IPv6Network=str(DEFAULT_NETWORK6))
        conf["Backend"] = {"Type": self.backend}
        return json.dumps(conf, separators=(",", ":"))


def check_prefix(prefix: str) -> str:
    """Accept a lab prefix: a lowercase letter then up to 11 letters/digits."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise ConfigError(
            f"lab prefix {prefix!r} must be a lowercase letter followed by at most "
            "11 lowercase letters or digits"
        )
    return prefix


def state_dir(prefix: str) -> str:
    return os.path.join(STATE_ROOT, check_prefix(prefix))


def is_lab_netns(prefix: str, name: str) -> bool:
    """Whether namespace ``name`` follows lab ``prefix``'s naming scheme."""
    return re.fullmatch(re.escape(prefix) + r"-(ul|n\d+(p\d+)?)", name) is not None


def make_plan(
    prefix: str = DEFAULT_PREFIX,
    nodes: int = 3,
    pods_per_node: int = 1,
    backend: str = "vxlan",
    network: ipaddress.IPv4Network = DEFAULT_NETWORK,
    etcd_prefix: str = DEFAULT_ETCD_PREFIX,
    subnet_mgr: str = "etcd",
    image: str | None = None,
    flanneld: Mapping[str, str] | None = None,
    network_policy: bool = False,
    netpol_model: bool = False,
    ip_family: str = "ipv4",
) -> LabPlan:
    """Lay out a lab; ConfigError on out-of-range input.

    ``flanneld`` maps node names to another flanneld binary those nodes run
    (with the same upstream flags) instead of ours: a mixed cluster.
    """
    binaries = dict(flanneld or {})
    check_prefix(prefix)
    if not 1 <= nodes <= MAX_NODES:
        raise ConfigError(f"nodes must be between 1 and {MAX_NODES}, not {nodes}")
    if not 0 <= pods_per_node <= MAX_PODS_PER_NODE:
        raise ConfigError(
            f"pods per node must be between 0 and {MAX_PODS_PER_NODE}, not {pods_per_node}"
        )
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if subnet_mgr not in SUBNET_MGRS:
        raise ConfigError(
            f"subnet manager must be one of {', '.join(SUBNET_MGRS)}, not {subnet_mgr!r}"
        )
    if image is not None and subnet_mgr != "kube":
        raise ConfigError("--image runs the manifest's DaemonSet: it needs --subnet-mgr kube")
    if binaries and image is not None:
        raise ConfigError("--flanneld runs a binary on the node itself: not with --image")
    unknown = sorted(set(binaries) - {f"n{i}" for i in range(1, nodes + 1)})
    if unknown:
        raise ConfigError(
            f"--flanneld names {', '.join(unknown)}, but the lab's nodes are n1..n{nodes}"
        )
    check_ip_family(ip_family, backend, subnet_mgr, image)
    if binaries and (network_policy or netpol_model):
        raise ConfigError("--flanneld gives another binary upstream's flags only: "
                          "--network-policy is pyflannel's own")
    if (network_policy or netpol_model) and (subnet_mgr != "kube" or image is not None):
        raise ConfigError("--network-policy and --netpol-model need --subnet-mgr kube "
                          "(and flanneld as a process, not --image)")
    if netpol_model and nodes * pods_per_node < 9:
        raise ConfigError(f"--netpol-model needs 9 pods, not {nodes} x {pods_per_node}")
    hosts = list(UNDERLAY.hosts())
    node_plans = []
    for i in range(1, nodes + 1):
        name = f"n{i}"
        pods = tuple(
            PodPlan(
                name=f"{name}p{j}",
                netns=f"{prefix}-{name}p{j}",
                container_id=f"{prefix}-{name}p{j}",
            )
            for j in range(1, pods_per_node + 1)
        )
        node_plans.append(
            NodePlan(
                name=name,
                index=i,
                netns=f"{prefix}-{name}",
                bridge_port=f"veth-{name}",
                address=ipaddress.IPv4Interface(
                    f"{hosts[FIRST_NODE_HOST + i - 1]}/{UNDERLAY.prefixlen}"
                ),
                pods=pods,
                flanneld=binaries.get(name),
                address6=_underlay6(FIRST_NODE_HOST + i) if ip_family != "ipv4" else None,
            )
        )
    plan = LabPlan(
        prefix=prefix,
        backend=backend,
        network=network,
        etcd_prefix=etcd_prefix,
        underlay_netns=f"{prefix}-ul",
        gateway=ipaddress.IPv4Interface(f"{hosts[0]}/{UNDERLAY.prefixlen}"),
        nodes=tuple(node_plans),
        subnet_mgr=subnet_mgr,
        image=image,
        network_policy=network_policy,
        netpol_model=netpol_model,
        ip_family=ip_family,
        gateway6=_underlay6(1) if ip_family != "ipv4" else None,
    )
    too_long = [name for name in interface_names(plan) if len(name) > IFNAMSIZ]
    if too_long:
        raise ConfigError(f"interface names longer than {IFNAMSIZ}: {', '.join(too_long)}")
    return plan


def _underlay6(host: int) -> ipaddress.IPv6Interface:
    """Host ``host`` of UNDERLAY6, written like its IPv4 twin: 11 is ``fd00:198:18::11``."""
    suffix = int(str(host), 16)
    return ipaddress.IPv6Interface((int(UNDERLAY6.network_address) + suffix, UNDERLAY6.prefixlen))


def check_ip_family(ip_family: str, backend: str, subnet_mgr: str, image: str | None) -> None:
    """ConfigError for an address family the lab cannot run with these settings (yet)."""
    if ip_family not in IP_FAMILIES:
        raise ConfigError(f"--ip-family must be one of {', '.join(IP_FAMILIES)}, not "
                          f"{ip_family!r}")
    if ip_family == "ipv4":
        return
    if backend == "udp":
        raise ConfigError("the udp backend is IPv4-only, in upstream flannel too (it leases "
                          "IPv4 only and carries no IPv6 pod traffic): use --ip-family ipv4")
    if ip_family == "ipv6" and subnet_mgr != "kube":
        raise ConfigError("upstream's etcd subnet manager always leases an IPv4 subnet: "
                          "--ip-family ipv6 needs --subnet-mgr kube")
    if image is not None:
        raise ConfigError(f"--ip-family {ip_family} does not run with --image: the manifest's "
                          "net-conf.json decides the families there")


def interface_names(plan: LabPlan) -> tuple[str, ...]:
    """Every interface name the lab itself creates (for the IFNAMSIZ check)."""
    names = [UNDERLAY_BRIDGE, NODE_UNDERLAY_IF, POD_IF]
    names.extend(node.bridge_port for node in plan.nodes)
    return tuple(names)


@dataclass(frozen=True, slots=True)
class NodePaths:
    """Where one node keeps its files, all under the lab's state dir."""

    root: str
    pod_layout: bool = False  # image mode: flanneld is a pod with the node's host paths

    @property
    def host_root(self) -> str:
        """Image mode: this node's own copy of the host paths its pod mounts (/run/flannel...)."""
        return os.path.join(self.root, "host")

    @property
    def pod_dir(self) -> str:
        """Image mode: the pod's ConfigMap files and service-account token."""
        return os.path.join(self.root, "pod")

    @property
    def subnet_file(self) -> str:
        if self.pod_layout:  # where flanneld and the CNI plugin look, on this node's host
            return os.path.join(self.host_root, "run", "flannel", "subnet.env")
        return os.path.join(self.root, "subnet.env")

    @property
    def log(self) -> str:
        return os.path.join(self.root, "flanneld.log")

    @property
    def cni_cache(self) -> str:
        return os.path.join(self.root, "cni")

    @property
    def ipam_dir(self) -> str:
        return os.path.join(self.root, "ipam")

    @property
    def cni_log(self) -> str:
        return os.path.join(self.root, "cni.log")

    @property
    def net_conf(self) -> str:
        """net-conf.json as a ConfigMap mount would hold it (kube mode)."""
        return os.path.join(self.root, "net-conf.json")

    @property
    def kubeconfig(self) -> str:
        return os.path.join(self.root, "kubeconfig")

    @property
    def cni_conf_dir(self) -> str:
        """The node's /etc/cni/net.d (what kube-flannel.yml's install-cni fills)."""
        if self.pod_layout:  # filled by the install-cni init container itself
            return os.path.join(self.host_root, "etc", "cni", "net.d")
        return os.path.join(self.root, "net.d")

    @property
    def wireguard_key(self) -> str:
        """The node's WireGuard private key (its wireguard-go PID file sits beside it)."""
        return os.path.join(self.root, "wgkey")


def node_paths(plan: LabPlan, node: NodePlan) -> NodePaths:
    return NodePaths(os.path.join(plan.state_dir, node.name), plan.image is not None)


def parse_flanneld_binaries(specs: Sequence[str]) -> dict[str, str]:
    """``--flanneld NODE=PATH`` options as {node: path}; ConfigError on a malformed one."""
    binaries: dict[str, str] = {}
    for spec in specs:
        node, _, path = spec.partition("=")
        if not node or not path:
            raise ConfigError(f"--flanneld {spec!r}: expected NODE=PATH, e.g. n2=/opt/flanneld")
        if not os.path.isabs(path):
            raise ConfigError(f"--flanneld {spec!r}: the path must be absolute")
        if node in binaries:
            raise ConfigError(f"--flanneld names {node} twice")
        binaries[node] = path
    return binaries


def flanneld_launcher(node: NodePlan, ours: Sequence[str]) -> list[str]:
    """How to start ``node``'s flanneld: its other binary if it has one, else ``ours``."""
    return [node.flanneld] if node.flanneld is not None else list(ours)


def flanneld_argv(launcher: Sequence[str], plan: LabPlan, node: NodePlan) -> list[str]:
    """The flanneld command line for ``node``, upstream flag spelling.

    ``launcher`` is how to start flanneld (see :func:`flanneld.lab.procs.launcher`).
    In kube mode it also needs ``NODE_NAME`` (see :func:`flanneld_env`).
    """
    paths = node_paths(plan, node)
    store = (
        [
            "--kube-subnet-mgr",
            f"--kubeconfig-file={paths.kubeconfig}",
            f"--net-config-path={paths.net_conf}",
        ]
        if plan.kube
        else [f"-etcd-endpoints={plan.etcd_url}", f"-etcd-prefix={plan.etcd_prefix}"]
    )
    return [
        *launcher,
        *store,
        f"-iface={NODE_UNDERLAY_IF}",
        f"-subnet-file={node_paths(plan, node).subnet_file}",
        "-healthz-ip=0.0.0.0",
        f"-healthz-port={HEALTHZ_PORT}",
        # as kube-flannel.yml: flanneld masquerades, so the bridge plugin does not
        # (with ipMasq on the bridge, pod-to-pod traffic across nodes would be NATed)
        "-ip-masq",
        *(["--network-policy"] if plan.network_policy else []),
        "-v=1",
    ]


def flanneld_env(plan: LabPlan, node: NodePlan) -> dict[str, str]:
    """Extra environment for ``node``'s flanneld: its Node's name in kube mode, and a
    WireGuard key file of its own (every node shares the machine's /run/flannel)."""
    env = {"NODE_NAME": node.name} if plan.kube else {}
    if plan.backend == "wireguard":
        env["WIREGUARD_KEY_FILE"] = node_paths(plan, node).wireguard_key
    return env


def pod_cidr(plan: LabPlan, node: NodePlan) -> ipaddress.IPv4Network:
    """The ``spec.podCIDR`` the lab gives ``node``'s Node object: /24 number ``index``."""
    first = int(plan.network.network_address)
    return ipaddress.IPv4Network((first + (node.index << 8), 24))


def node_pod_cidrs(
    plan: LabPlan, node: NodePlan
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``spec.podCIDRs``: :func:`pod_cidr`, and in dual stack /64 number ``index`` of
    DEFAULT_NETWORK6 after it."""
    first = int(DEFAULT_NETWORK6.network_address)
    v6 = ipaddress.IPv6Network((first + (node.index << 64), 64))
    if not plan.ipv6:
        return (pod_cidr(plan, node),)
    return (pod_cidr(plan, node), v6) if plan.ipv4 else (v6,)


def kubeconfig(plan: LabPlan) -> dict[str, object]:
    """A kubeconfig for the API double: plain HTTP, no credentials (JSON is valid YAML)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": plan.prefix, "cluster": {"server": plan.kube_api_url}}],
        "users": [{"name": "flanneld", "user": {}}],
        "contexts": [
            {"name": plan.prefix, "context": {"cluster": plan.prefix, "user": "flanneld"}}
        ],
        "current-context": plan.prefix,
    }


def cni_netconf(plan: LabPlan, node: NodePlan) -> dict[str, object]:
    """The netconf a runtime would hand our ``flannel`` plugin on ``node``.

    Everything it writes (delegate cache, host-local allocations) lands in
    the node's state dir, never in /var/lib/cni.
    """
    paths = node_paths(plan, node)
    return {
        "cniVersion": CNI_VERSION,
        "name": CNI_NETWORK_NAME,
        "type": "flannel",
        "subnetFile": paths.subnet_file,
        "dataDir": paths.cni_cache,
        "delegate": {"hairpinMode": True, "isDefaultGateway": True},
        "ipam": {"dataDir": paths.ipam_dir},
    }


CNI_CONFLIST = "10-flannel.conflist"


def cni_conflist(plan: LabPlan, node: NodePlan) -> dict[str, object]:
    """The conflist the node's CNI config directory holds: our netconf as its one plugin."""
    plugin = {k: v for k, v in cni_netconf(plan, node).items() if k not in ("cniVersion", "name")}
    return {"name": CNI_NETWORK_NAME, "cniVersion": CNI_VERSION, "plugins": [plugin]}


def cni_env(plan: LabPlan, pod: PodPlan, command: str, cni_path: str) -> dict[str, str]:
    """The CNI_* variables for one plugin call on ``pod``."""
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": os.path.join("/var/run/netns", pod.netns),
        "CNI_IFNAME": POD_IF,
        "CNI_PATH": cni_path,
    }
