"""Reading flanneld's subnet.env as upstream's CNI plugin does.

``parse_subnet_env`` is pure; ``load_subnet_env`` adds the file read and
turns a missing file into the message operators search for.
"""

from __future__ import annotations

from cni import cidr
from cni.errors import INTERNAL, IO_FAILURE, TRY_AGAIN_LATER, CniError
from cni.files import UnreadableFile, read_regular
from cni.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cni.cidr import Network

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
_MAX_MTU = 2**32 - 1
# flanneld writes about 150 bytes; the cap keeps a wrong subnetFile (a log,
# a device) from being read whole by a plugin that runs as root.
MAX_SUBNET_FILE = 64 * 1024


class SubnetEnv(Record):
    """This node's flannel networks, subnets, MTU and masquerade flag.

    ``networks``/``ipv6_networks`` are de-duplicated in file order;
    ``subnet``/``ipv6_subnet`` have their host bits masked (``10.1.17.1/24``
    is ``10.1.17.0/24``). At least one network and one subnet are present.
    """

    __slots__ = ("ipmasq", "ipv6_networks", "ipv6_subnet", "mtu", "networks", "subnet")
    networks: tuple[Network, ...]
    subnet: Network | None
    ipv6_networks: tuple[Network, ...]
    ipv6_subnet: Network | None
    mtu: int
    ipmasq: bool

    def __init__(
        self,
        *,
        networks: tuple[Network, ...],
        subnet: Network | None,
        ipv6_networks: tuple[Network, ...],
        ipv6_subnet: Network | None,
        mtu: int,
        ipmasq: bool,
    ) -> None:
        self._set("networks", networks)
        self._set("subnet", subnet)
        self._set("ipv6_networks", ipv6_networks)
        self._set("ipv6_subnet", ipv6_subnet)
        self._set("mtu", mtu)
        self._set("ipmasq", ipmasq)


_KEYS = frozenset(
    {
        "FLANNEL_NETWORK",
        "FLANNEL_IPV6_NETWORK",
        "FLANNEL_SUBNET",
        "FLANNEL_IPV6_SUBNET",
        "FLANNEL_MTU",
        "FLANNEL_IPMASQ",
    }
)


def _network(text: str) -> Network:
    """A CIDR with its host bits cleared, as ``net.ParseCIDR``'s IPNet."""
    return cidr.parse_cidr(text).network


def _network_list(text: str) -> tuple[Network, ...]:
    found: list[Network] = []
    for item in text.split(","):
        network = _network(item)
        if network not in found:
            found.append(network)
    return tuple(found)


def _mtu(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > _MAX_MTU:
        raise ValueError(f"invalid MTU {text!r}")
    return int(text)


def parse_subnet_env(text: str, path: str) -> SubnetEnv:
    """Parse subnet.env ``KEY=VALUE`` lines; unknown keys are ignored.

    A key given twice takes its last value. Raises CniError naming ``path``
    for a bad value or for missing keys (upstream's "<file> is missing ...").
    """
    networks: tuple[Network, ...] = ()
    ipv6_networks: tuple[Network, ...] = ()
    subnet: Network | None = None
    ipv6_subnet: Network | None = None
    mtu: int | None = None
    ipmasq: bool | None = None
    for number, line in enumerate(text.split("\n"), start=1):
        key, equals, value = line.removesuffix("\r").partition("=")
        if key not in _KEYS:
            continue
        if not equals:
            raise CniError(INTERNAL, f"{path}:{number}: {key} has no value")
        try:
            if key == "FLANNEL_NETWORK":
                networks = _network_list(value)
            elif key == "FLANNEL_IPV6_NETWORK":
                ipv6_networks = _network_list(value)
            elif key == "FLANNEL_SUBNET":
                subnet = _network(value)
            elif key == "FLANNEL_IPV6_SUBNET":
                ipv6_subnet = _network(value)
            elif key == "FLANNEL_MTU":
                mtu = _mtu(value)
            else:
                ipmasq = value == "true"
        except ValueError as err:
            raise CniError(INTERNAL, f"{path}:{number}: bad {key}: {err}") from None
    missing: list[str] = []
    if not networks and not ipv6_networks:
        missing += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if subnet is None and ipv6_subnet is None:
        missing += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    if mtu is None:
        missing.append("FLANNEL_MTU")
    if ipmasq is None:
        missing.append("FLANNEL_IPMASQ")
    if missing or mtu is None or ipmasq is None:
        raise CniError(INTERNAL, f"{path} is missing {', '.join(missing)}")
    return SubnetEnv(
        networks=networks,
        subnet=subnet,
        ipv6_networks=ipv6_networks,
        ipv6_subnet=ipv6_subnet,
        mtu=mtu,
        ipmasq=ipmasq,
    )


def load_subnet_env(path: str) -> SubnetEnv:
    """Read and parse the subnet.env that flanneld writes on this node."""
    try:
        data = read_regular(path, MAX_SUBNET_FILE)
    except UnreadableFile as err:
        raise CniError(IO_FAILURE, f"failed to load flannel 'subnet.env' file: {err}") from None
    except FileNotFoundError as err:
        raise CniError(
            TRY_AGAIN_LATER,
            f"failed to load flannel 'subnet.env' file: open {path}: {err.strerror}."
            " Check the flannel pod log for this node (flanneld writes this file"
            " once it has a subnet lease).",
        ) from None
    except OSError as err:
        raise CniError(
            IO_FAILURE,
            f"failed to load flannel 'subnet.env' file: open {path}: {err.strerror}."
            " Check the flannel pod log for this node.",
        ) from None
    return parse_subnet_env(data.decode("utf-8", "replace"), path)
