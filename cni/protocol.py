"""The CNI calling convention, as libcni's ``skel`` package implements it.

Which ``CNI_*`` variables each command needs, how container IDs and
interface names are checked, which spec versions are accepted for which
command, and the JSON written for VERSION and for errors.
"""

from __future__ import annotations

from cni.errors import DECODING_FAILURE, INCOMPATIBLE_VERSION, INVALID_ENVIRONMENT, CniError
from cni.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import BinaryIO

# Every version libcni v1.2 knows (``version.All``), like upstream's plugin.
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = SUPPORTED_VERSIONS[-1]
# The oldest config version that allows a command, where it is not 0.1.0.
_MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
MAX_IFNAME = 15


def validate_ifname(ifname: str) -> str:
    """libcni's interface name rules (the kernel's ``dev_valid_name``)."""
    if not ifname:
        raise CniError(INVALID_ENVIRONMENT, "interface name is empty")
    if len(ifname) > MAX_IFNAME:
        raise CniError(
            INVALID_ENVIRONMENT,
            "interface name is too long",
            f"interface name should be less than {MAX_IFNAME + 1} characters",
        )
    if ifname in (".", ".."):
        raise CniError(INVALID_ENVIRONMENT, "interface name is . or ..")
    if any(char in "/:" or char.isspace() for char in ifname):
        raise CniError(
            INVALID_ENVIRONMENT, "interface name contains / or : or whitespace characters"
        )
    return ifname


def _container_id(value: str) -> str:
    from cni.cache import validate_container_id  # not on VERSION's path

    return validate_container_id(value)


# (variable, commands that require it, check applied when it is required and set)
_VARIABLES: tuple[tuple[str, frozenset[str], Callable[[str], str] | None], ...] = (
    ("CNI_COMMAND", frozenset(COMMANDS), None),
    ("CNI_CONTAINERID", frozenset({"ADD", "CHECK", "DEL"}), _container_id),
    ("CNI_NETNS", frozenset({"ADD", "CHECK"}), None),
    ("CNI_IFNAME", frozenset({"ADD", "CHECK", "DEL"}), validate_ifname),
    ("CNI_PATH", frozenset({"ADD", "CHECK", "DEL", "GC", "STATUS"}), None),
)


class Request(Record):
    """One plugin invocation: the command, its ``CNI_*`` arguments and stdin."""

    __slots__ = ("command", "container_id", "ifname", "netns", "path", "stdin")
    command: str
    container_id: str
    netns: str
    ifname: str
    path: str
    stdin: bytes

    def __init__(
        self,
        *,
        command: str,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        path: str = "",
        stdin: bytes = b"",
    ) -> None:
        self._set("command", command)
        self._set("container_id", container_id)
        self._set("netns", netns)
        self._set("ifname", ifname)
        self._set("path", path)
        self._set("stdin", stdin)


def read_request(environ: Mapping[str, str], stdin: BinaryIO) -> Request:
    """Check the ``CNI_*`` variables for the command and read stdin (not for VERSION).

    Missing variables are reported together, in the spec's order
    ("required env variables [CNI_NETNS,CNI_PATH] missing"), code 4.
    """
    command = environ.get("CNI_COMMAND", "")
    if command and command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command}")
    missing: list[str] = []
    for name, required_by, check in _VARIABLES:
        value = environ.get(name, "")
        if not value:
            if command in required_by or name == "CNI_COMMAND":
                missing.append(name)
        elif check is not None and command in required_by:
            check(value)
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"required env variables [{','.join(missing)}] missing")
    return Request(
        command=command,
        container_id=environ.get("CNI_CONTAINERID", ""),
        netns=environ.get("CNI_NETNS", ""),
        ifname=environ.get("CNI_IFNAME", ""),
        path=environ.get("CNI_PATH", ""),
        stdin=b"" if command == "VERSION" else stdin.read(),
    )


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def check_version(config_version: str, command: str) -> None:
    """Refuse a config version the plugin or the command does not support (code 1)."""
    if config_version not in SUPPORTED_VERSIONS:
        supported = " ".join(f'"{version}"' for version in SUPPORTED_VERSIONS)
        if command in _MIN_VERSION and not _is_semver(config_version):
            raise CniError(DECODING_FAILURE, f"invalid version {config_version!r}")
        raise CniError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f'config is "{config_version}", plugin supports [{supported}]',
        )
    minimum = _MIN_VERSION.get(command)
    if minimum is not None and _version_tuple(config_version) < _version_tuple(minimum):
        raise CniError(INCOMPATIBLE_VERSION, f"config version does not allow {command}")


def _is_semver(version: str) -> bool:
    parts = version.split(".")
    return len(parts) == 3 and all(part.isascii() and part.isdigit() for part in parts)


def version_json() -> bytes:
    """The VERSION answer (libcni's ``PluginInfo.Encode``)."""
    # Spelled out rather than json.dumps: VERSION is the start-up probe, and the
    # json module (with re) is most of what importing costs.  A unit test checks
    # that it parses to what json.dumps would write.
    versions = ",".join(f'"{version}"' for version in SUPPORTED_VERSIONS)
    return f'{{"cniVersion":"{CURRENT_VERSION}","supportedVersions":[{versions}]}}\n'.encode()


def error_json(error: CniError, config_version: str) -> bytes:
    """The error result the spec defines, in the caller's version where it is one we speak."""
    version = config_version if config_version in SUPPORTED_VERSIONS else CURRENT_VERSION
    body = {"cniVersion": version, "code": error.code, "msg": error.msg, "details": error.details}
    import json

    return json.dumps(body, separators=(",", ":")).encode()


def is_error_json(output: bytes) -> bool:
    """Whether a plugin's stdout is a CNI error result (an object with a numeric code)."""
    import json

    try:
        body = json.loads(output)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        return False
    return (
        isinstance(body, dict)
        and isinstance(body.get("code"), int)
        and not isinstance(body.get("code"), bool)
    )
