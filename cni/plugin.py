"""The ``flannel`` CNI plugin: entry point and the four commands.

A meta-plugin like upstream's flannel-io/cni-plugin: ADD reads subnet.env,
renders the delegate config, caches it and runs the delegate (``bridge`` by
default); DEL replays the cached config. CHECK, GC and STATUS succeed once
the arguments and version are valid, as upstream's do. CHECK is not passed
to the delegate: bridge before containernetworking/plugins 1.3 (Debian 12
ships 1.1.1) fails CHECK on every healthy flannel pod, because flannel's
routes carry no gateway (plugins PR #887). The delegate's stdout and exit
status are passed on unchanged. This is the only place that turns errors
into CNI error JSON and an exit status.

Start-up matters (the runtime starts the plugin for every pod), so each
command imports only what it uses: VERSION nothing beyond ``sys`` and the
built-in ``posix`` (the environment as ``os.environ`` decodes it);
ADD and DEL also ``stat`` and the C parts of ``json`` and ``signal`` (through
our own modules, imported where the command needs them: not the ``json``
and ``signal`` packages, which would bring ``re`` and ``enum``; CIDRs are
parsed by ``cni.cidr``, not ``ipaddress``, which would bring ``functools``
and ``collections``; files and processes through ``posix``, not ``os``,
which brings ``collections.abc``); ``logging`` is imported when there is
something to log.
"""

from __future__ import annotations

import sys

from cni.errors import INTERNAL, CniError
from cni.protocol import (
    SUPPORTED_VERSIONS,
    Request,
    check_version,
    error_json,
    is_error_json,
    read_request,
    version_json,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Mapping
    from typing import BinaryIO, NoReturn, TextIO

    from cni.invoke import PluginResult
    from cni.stdin_config import NetConf

    Handler = Callable[[Request, NetConf, Mapping[str, str], BinaryIO], int]

ABOUT = "CNI Plugin flannel version pyflannel 0.1.0"


def _log() -> logging.Logger:
    import logging

    return logging.getLogger(__name__)


def _relay(result: PluginResult, plugin: str, stdout: BinaryIO) -> int:
    """Pass the delegate's answer on; wrap a failure that came without error JSON."""
    if result.returncode == 0:
        stdout.write(result.stdout)
        return 0
    if is_error_json(result.stdout):
        stdout.write(result.stdout)
        return result.returncode if result.returncode > 0 else 1
    output = result.stdout.decode("utf-8", "replace").strip()
    raise CniError(INTERNAL, f"plugin {plugin} failed with exit status {result.returncode}", output)


def _cached_type(data: bytes) -> str | None:
    """The delegate type of a cached config, or None if it is not one we wrote."""
    from cni import gojson

    try:
        cached = gojson.loads(data)
    except ValueError:
        return None
    delegate_type = cached.get("type") if isinstance(cached, dict) else None
    return delegate_type if isinstance(delegate_type, str) else None


def cmd_add(request: Request, conf: NetConf, environ: Mapping[str, str], stdout: BinaryIO) -> int:
    from cni import gojson
    from cni.cache import ScratchCache
    from cni.invoke import find_plugin, run_plugin
    from cni.render import render_delegate
    from cni.subnetenv import load_subnet_env

    env = load_subnet_env(conf.subnet_file)
    delegate = render_delegate(conf, env)
    data = gojson.dumps(delegate)
    ScratchCache(conf.data_dir).save(request.container_id, data)
    plugin = find_plugin(str(delegate["type"]), request.path)
    return _relay(run_plugin(plugin, "ADD", data, environ), plugin, stdout)


def cmd_del(request: Request, conf: NetConf, environ: Mapping[str, str], stdout: BinaryIO) -> int:
    from cni.cache import ScratchCache
    from cni.invoke import find_plugin, run_plugin

    cache = ScratchCache(conf.data_dir)
    data = cache.load(request.container_id)
    if data is None:
        return 0  # never added, or already deleted
    delegate_type = _cached_type(data)
    if delegate_type is None:
        _log().warning(
            "DEL %s: cached delegate config %s is unreadable; the pod's interface"
            " stays until the node reboots",
            request.container_id,
            cache.path(request.container_id),
        )
        return 0
    plugin = find_plugin(delegate_type, request.path)
    result = run_plugin(plugin, "DEL", data, environ)
    if result.returncode == 0:
        try:
            cache.remove(request.container_id)
        except CniError as err:
            _log().warning("DEL %s: %s", request.container_id, err)
    return _relay(result, plugin, stdout)


def cmd_noop(request: Request, conf: NetConf, environ: Mapping[str, str], stdout: BinaryIO) -> int:
    return 0


HANDLERS: dict[str, Handler] = {
    "ADD": cmd_add,
    "DEL": cmd_del,
    "CHECK": cmd_noop,
    "GC": cmd_noop,
    "STATUS": cmd_noop,
}


def run(environ: Mapping[str, str], stdin: BinaryIO, stdout: BinaryIO, stderr: TextIO) -> int:
    """Serve one invocation; returns the exit status."""
    if not environ.get("CNI_COMMAND"):
        stderr.write(f"{ABOUT}\nCNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n")
        return 0
    config_version = ""
    try:
        request = read_request(environ, stdin)
        if request.command == "VERSION":
            stdout.write(version_json())
            return 0
        from cni.stdin_config import parse_netconf

        conf = parse_netconf(request.stdin)
        config_version = conf.cni_version
        check_version(conf.effective_version, request.command)
        return HANDLERS[request.command](request, conf, environ, stdout)
    except CniError as err:
        stdout.write(error_json(err, config_version))
        return 1
    except Exception as err:  # noqa: BLE001 - a bug; the runtime still gets JSON it can read
        _log().exception("flannel plugin failed")
        stdout.write(error_json(CniError(INTERNAL, "internal error", repr(err)), config_version))
        return 1


def environment() -> dict[str, str]:
    """``os.environ``'s contents, decoded the same way, without importing :mod:`os`.

    :mod:`os` brings ``collections.abc``: a millisecond of VERSION's start,
    which needs nothing else from it.
    """
    import posix

    encoding = sys.getfilesystemencoding()
    return {
        key.decode(encoding, "surrogateescape"): value.decode(encoding, "surrogateescape")
        for key, value in posix.environ.items()
    }


def finish(status: int) -> NoReturn:
    """End the process with ``status`` once stdout and stderr are flushed.

    The interpreter's own exit (freeing every module and object) costs a
    millisecond or two of each call and does nothing the kernel does not do
    anyway: no file is left open for writing by then, and the plugin has no
    exit handlers. A flush that fails ends with 120, as the interpreter's exit
    does then.
    """
    import posix

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        status = 120
    posix._exit(status)


def main() -> NoReturn:
    finish(run(environment(), sys.stdin.buffer, sys.stdout.buffer, sys.stderr))


if __name__ == "__main__":
    main()
