"""The flannel plugin's network configuration from stdin (pure).

Field names follow upstream (``subnetFile``, ``dataDir``, ``delegate``,
``ipam``, ``runtimeConfig``) and, as in Go, match case-insensitively.
Validation follows libcni's skel: undecodable input is code 6, a missing or
malformed ``name`` is code 7; wrongly typed plugin fields are code 7.
"""

from __future__ import annotations

from cni import gojson
from cni.errors import DECODING_FAILURE, INVALID_NETWORK_CONFIG, CniError
from cni.record import Record
from cni.subnetenv import DEFAULT_SUBNET_FILE

DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
# A config without cniVersion is a 0.1.0 config (libcni's ConfigDecoder).
IMPLICIT_VERSION = "0.1.0"

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")


def is_valid_name(text: str) -> bool:
    """libcni's name rule for networks and container IDs: ``[a-zA-Z0-9][a-zA-Z0-9_.-]*``."""
    return bool(text) and text[0] in _ALNUM and all(char in _NAME_CHARS for char in text)


class NetConf(Record):
    """The parts of the netconf the plugin acts on."""

    __slots__ = (
        "cni_version",
        "data_dir",
        "delegate",
        "ipam",
        "name",
        "runtime_config",
        "subnet_file",
    )
    name: str
    cni_version: str
    subnet_file: str
    data_dir: str
    delegate: dict[str, object] | None
    ipam: dict[str, object] | None
    runtime_config: dict[str, object] | None

    def __init__(
        self,
        *,
        name: str,
        cni_version: str = "",
        subnet_file: str = DEFAULT_SUBNET_FILE,
        data_dir: str = DEFAULT_DATA_DIR,
        delegate: dict[str, object] | None = None,
        ipam: dict[str, object] | None = None,
        runtime_config: dict[str, object] | None = None,
    ) -> None:
        self._set("name", name)
        self._set("cni_version", cni_version)
        self._set("subnet_file", subnet_file)
        self._set("data_dir", data_dir)
        self._set("delegate", delegate)
        self._set("ipam", ipam)
        self._set("runtime_config", runtime_config)

    @property
    def effective_version(self) -> str:
        """The spec version the config speaks (libcni reads an absent one as 0.1.0)."""
        return self.cni_version or IMPLICIT_VERSION


def _string(obj: dict[str, object], key: str, default: str, code: int) -> str:
    present, value = gojson.field(obj, key)
    if not present or value is None:  # Go leaves the field alone for null
        return default
    if not isinstance(value, str):
        raise CniError(code, f"invalid network config: {key!r} must be a string")
    return value


def _path(obj: dict[str, object], key: str, default: str) -> str:
    value = _string(obj, key, default, INVALID_NETWORK_CONFIG)
    if not value or "\0" in value:
        raise CniError(INVALID_NETWORK_CONFIG, f"invalid network config: bad {key!r} {value!r}")
    return value


def _object(obj: dict[str, object], key: str) -> dict[str, object] | None:
    present, value = gojson.field(obj, key)
    if not present or value is None:
        return None
    if not isinstance(value, dict):
        raise CniError(INVALID_NETWORK_CONFIG, f"invalid network config: {key!r} must be an object")
    return value


def parse_netconf(data: bytes) -> NetConf:
    """Decode and check the netconf the runtime wrote to stdin. Raises CniError."""
    try:
        raw = gojson.loads(data)
    except ValueError as err:
        raise CniError(DECODING_FAILURE, f"error unmarshall network config: {err}") from None
    if not isinstance(raw, dict):
        raise CniError(DECODING_FAILURE, "error unmarshall network config: not a JSON object")
    name = _string(raw, "name", "", DECODING_FAILURE)
    if not name:
        raise CniError(INVALID_NETWORK_CONFIG, "missing network name")
    if not is_valid_name(name):
        raise CniError(INVALID_NETWORK_CONFIG, "invalid characters found in network name", name)
    return NetConf(
        name=name,
        cni_version=_string(raw, "cniVersion", "", DECODING_FAILURE),
        subnet_file=_path(raw, "subnetFile", DEFAULT_SUBNET_FILE),
        data_dir=_path(raw, "dataDir", DEFAULT_DATA_DIR),
        delegate=_object(raw, "delegate"),
        ipam=_object(raw, "ipam"),
        runtime_config=_object(raw, "runtimeConfig"),
    )
