"""What a kubelet runs for a DaemonSet's pod on one node, as podman command lines (pure).

:func:`load_manifest` reads a manifest (``manifests/kube-flannel.yml``);
:func:`pod_run` turns its DaemonSet's pod template into a :class:`PodRun`
for one lab node: the host directories and files to create first (hostPath
volumes, ConfigMap files, the service-account token), then one ``podman run``
per container, init containers first and in order, each in the node's network
namespace (``hostNetwork``).  Host paths map into the node's own directory
(``/run/flannel`` -> ``<host root>/run/flannel``), so every node has its own
``/run/flannel``, ``/etc/cni/net.d`` and ``/opt/cni/bin``.

A wrong detail in the manifest fails here as the kubelet or the API server
would refuse it (a volumeMount of no volume, a ConfigMap or key that does
not exist, an env source it cannot resolve); fields the lab cannot honour
(scheduling, resources, liveness probes...) are listed in
:attr:`PodRun.ignored`, never silently dropped.  Nothing here touches the
system.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from subnet.errors import ConfigError

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# containerd's default capability set for a non-privileged container (kubelet + CRI).
RUNTIME_DEFAULT_CAPS = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)
CONFIGMAP_DEFAULT_MODE = 0o644

# Pod and container fields the lab runs as a kubelet would; everything else is listed.
_POD_FIELDS = frozenset({
    "hostNetwork", "initContainers", "containers", "volumes", "serviceAccountName",
    "serviceAccount", "automountServiceAccountToken",
})
_CONTAINER_FIELDS = frozenset({
    "name", "image", "command", "args", "env", "volumeMounts", "securityContext",
    "readinessProbe", "ports", "imagePullPolicy",
})
_SECURITY_FIELDS = frozenset({"privileged", "capabilities", "runAsUser", "readOnlyRootFilesystem"})
_FIELD_REFS = {
    "metadata.name", "metadata.namespace", "spec.nodeName", "spec.serviceAccountName",
    "status.hostIP", "status.podIP",
}
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass(frozen=True, slots=True)
class Manifest:
    """The objects of a manifest that a DaemonSet's pods need."""

    daemonset: dict[str, Any]
    configmaps: dict[tuple[str, str], dict[str, str]]  # (namespace, name) -> data

    @property
    def namespace(self) -> str:
        return str(self.daemonset.get("metadata", {}).get("namespace") or "default")

    @property
    def name(self) -> str:
        return str(self.daemonset["metadata"]["name"])

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.daemonset["spec"]["template"]["spec"]
        return spec

    def configmap_text(self, name: str, key: str) -> str:
        """One value of one of the manifest's ConfigMaps; ConfigError if it has none."""
        data = self.configmaps.get((self.namespace, name))
        if data is None:
            raise ConfigError(f'configmap "{name}" not found in namespace {self.namespace}')
        if key not in data:
            raise ConfigError(f'configmap "{name}" has no key "{key}"')
        return data[key]


@dataclass(frozen=True, slots=True)
class PodContext:
    """Where and as whom one pod of the DaemonSet runs (one per lab node)."""

    node_name: str
    node_ip: str
    netns_path: str  # the node's network namespace: hostNetwork
    host_root: str  # host path P of this node is host_root + P
    pod_dir: str  # this pod's ConfigMap files and service-account token
    api_host: str  # what KUBERNETES_SERVICE_HOST/PORT say
    api_port: int
    container_prefix: str  # podman names: <container_prefix>-<container name>
    image: str | None = None  # replaces every container's image
    ulimits: tuple[tuple[str, int], ...] = ()  # ("nofile", N): soft = hard = N

    @property
    def pod_name(self) -> str:
        return f"{self.container_prefix}-pod"


@dataclass(frozen=True, slots=True)
class HostPath:
    """A path to exist before the containers start: a directory or an (empty) file."""

    path: str
    directory: bool
    create: bool  # False: it must already exist (hostPath type Directory/File)


@dataclass(frozen=True, slots=True)
class HostFile:
    """A file the kubelet writes for the pod: a ConfigMap key or the token's files."""

    path: str
    text: str
    mode: int


@dataclass(frozen=True, slots=True)
class ContainerRun:
    name: str  # as in the manifest
    podman_name: str
    init: bool
    argv: tuple[str, ...]  # podman's arguments after the global options


@dataclass(frozen=True, slots=True)
class HttpProbe:
    path: str
    port: int


@dataclass(frozen=True, slots=True)
class PodRun:
    pod_name: str
    namespace: str
    service_account: str
    host_paths: tuple[HostPath, ...]
    files: tuple[HostFile, ...]  # ConfigMap volumes (the token is the lab's to write)
    token_dir: str | None  # where the service-account token, ca.crt, namespace go
    containers: tuple[ContainerRun, ...]  # init containers first, in order
    readiness: HttpProbe | None  # of the (first) main container
    ignored: tuple[str, ...]  # pod-spec fields the lab does not honour


def load_manifest(text: str, daemonset: str | None = None) -> Manifest:
    """The DaemonSet (the only one, or the one named) and the ConfigMaps of a manifest."""
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]
    except yaml.YAMLError as err:
        raise ConfigError(f"manifest is not YAML: {err}") from err
    sets = [d for d in docs if d.get("kind") == "DaemonSet"
            and (daemonset is None or d.get("metadata", {}).get("name") == daemonset)]
    if len(sets) != 1:
        raise ConfigError(f"manifest has {len(sets)} DaemonSets named {daemonset or 'anything'}"
                          ", need exactly one")
    configmaps: dict[tuple[str, str], dict[str, str]] = {}
    for doc in docs:
        if doc.get("kind") == "ConfigMap":
            meta = doc.get("metadata") or {}
            key = (str(meta.get("namespace") or "default"), str(meta.get("name")))
            configmaps[key] = {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
    try:
        sets[0]["spec"]["template"]["spec"]["containers"]
    except (KeyError, TypeError) as err:
        raise ConfigError("the DaemonSet has no spec.template.spec.containers") from err
    return Manifest(sets[0], configmaps)


def host_path(ctx: PodContext, path: str) -> str:
    """Where host path ``path`` of this node lives."""
    return os.path.join(ctx.host_root, os.path.normpath(path).lstrip("/"))


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command, args and env values (``$$`` is ``$``)."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(one, text)


def _field_ref(path: str, ctx: PodContext, namespace: str, service_account: str) -> str:
    values = {
        "metadata.name": ctx.pod_name,
        "metadata.namespace": namespace,
        "spec.nodeName": ctx.node_name,
        "spec.serviceAccountName": service_account,
        "status.hostIP": ctx.node_ip,
        "status.podIP": ctx.node_ip,  # hostNetwork: the pod has the node's address
    }
    if path not in _FIELD_REFS:
        raise ConfigError(f"env fieldRef {path!r} is not supported by the lab")
    return values[path]


def container_env(
    container: Mapping[str, Any], ctx: PodContext, manifest: Manifest, service_account: str
) -> list[tuple[str, str]]:
    """The container's environment: the kubelet's service variables, then the spec's."""
    env: dict[str, str] = {
        "KUBERNETES_SERVICE_HOST": ctx.api_host,
        "KUBERNETES_SERVICE_PORT": str(ctx.api_port),
    }
    for item in container.get("env") or []:
        name = str(item["name"])
        source = item.get("valueFrom")
        if source is None:
            env[name] = expand(str(item.get("value", "")), env)
        elif "fieldRef" in source:
            env[name] = _field_ref(str(source["fieldRef"]["fieldPath"]), ctx,
                                   manifest.namespace, service_account)
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[name] = manifest.configmap_text(str(ref["name"]), str(ref["key"]))
        else:
            raise ConfigError(f"env {name}: source {sorted(source)} is not supported by the lab")
    return list(env.items())


def capabilities(security: Mapping[str, Any]) -> tuple[str, ...]:
    """The container's capability set: the runtime's defaults, plus add, minus drop."""
    caps = security.get("capabilities") or {}
    drop = {str(c).upper().removeprefix("CAP_") for c in caps.get("drop") or []}
    add = [str(c).upper().removeprefix("CAP_") for c in caps.get("add") or []]
    base = () if "ALL" in drop else RUNTIME_DEFAULT_CAPS
    kept = [c for c in base if c not in drop]
    return tuple(dict.fromkeys([*kept, *add]))


@dataclass(frozen=True, slots=True)
class _Volumes:
    mounts: dict[str, tuple[str, bool]]  # volume name -> (host source, read-only)
    host_paths: tuple[HostPath, ...]
    files: tuple[HostFile, ...]


_HOSTPATH_TYPES = {
    "": (True, True), "DirectoryOrCreate": (True, True), "Directory": (True, False),
    "FileOrCreate": (False, True), "File": (False, False),
}


def _volumes(spec: Mapping[str, Any], ctx: PodContext, manifest: Manifest) -> _Volumes:
    mounts: dict[str, tuple[str, bool]] = {}
    paths: list[HostPath] = []
    files: list[HostFile] = []
    for volume in spec.get("volumes") or []:
        name = str(volume["name"])
        if "hostPath" in volume:
            source = host_path(ctx, str(volume["hostPath"]["path"]))
            kind = str(volume["hostPath"].get("type") or "")
            if kind not in _HOSTPATH_TYPES:
                raise ConfigError(f"volume {name}: hostPath type {kind!r} is not supported")
            is_dir, create = _HOSTPATH_TYPES[kind]
            paths.append(HostPath(source, is_dir, create))
            mounts[name] = (source, False)
        elif "configMap" in volume:
            ref = volume["configMap"]
            files_dir = os.path.join(ctx.pod_dir, "volumes", name)
            mode = int(ref.get("defaultMode", CONFIGMAP_DEFAULT_MODE))
            cm_name = str(ref["name"])
            items = ref.get("items")
            if items is None:
                data = manifest.configmaps.get((manifest.namespace, cm_name))
                if data is None:
                    raise ConfigError(f'volume {name}: configmap "{cm_name}" not found')
                items = [{"key": key, "path": key} for key in data]
            for item in items:
                text = manifest.configmap_text(cm_name, str(item["key"]))
                files.append(HostFile(os.path.join(files_dir, str(item["path"])), text,
                                      int(item.get("mode", mode))))
            paths.append(HostPath(files_dir, True, True))
            mounts[name] = (files_dir, True)  # the kubelet mounts ConfigMaps read-only
        else:
            raise ConfigError(f"volume {name}: only hostPath and configMap volumes are supported")
    return _Volumes(mounts, tuple(paths), tuple(files))


def _mount_args(container: Mapping[str, Any], volumes: _Volumes) -> list[str]:
    args: list[str] = []
    for mount in container.get("volumeMounts") or []:
        name = str(mount["name"])
        if name not in volumes.mounts:
            raise ConfigError(
                f'container {container["name"]}: volumeMount "{name}" refers to no volume')
        source, read_only = volumes.mounts[name]
        if mount.get("subPath"):
            source = os.path.join(source, str(mount["subPath"]))
        options = "ro" if read_only or mount.get("readOnly") else "rw"
        args += ["--volume", f"{source}:{mount['mountPath']}:{options}"]
    return args


def _security_args(container: Mapping[str, Any]) -> list[str]:
    security = container.get("securityContext") or {}
    if security.get("privileged"):
        return ["--privileged"]
    args = ["--cap-drop=all", *(f"--cap-add={cap}" for cap in capabilities(security))]
    if "runAsUser" in security:
        args.append(f"--user={int(security['runAsUser'])}")
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    return args


def _container_run(
    container: Mapping[str, Any], init: bool, ctx: PodContext, manifest: Manifest,
    volumes: _Volumes, token_mount: list[str], service_account: str,
) -> ContainerRun:
    name = str(container["name"])
    image = ctx.image or str(container.get("image") or "")
    if not image:
        raise ConfigError(f"container {name} has no image")
    env = container_env(container, ctx, manifest, service_account)
    variables = dict(env)
    argv = [
        "run", "--rm", "--pull=never", f"--name={ctx.container_prefix}-{name}",
        f"--network=ns:{ctx.netns_path}",
        *(f"--ulimit={kind}={value}:{value}" for kind, value in ctx.ulimits),
        *_security_args(container),
        *(f"--env={key}={value}" for key, value in env),
        *_mount_args(container, volumes),
        *token_mount,
    ]
    if container.get("command"):
        command = [expand(str(word), variables) for word in container["command"]]
        argv.append(f"--entrypoint={json.dumps(command)}")
    argv.append(image)
    argv += [expand(str(word), variables) for word in container.get("args") or []]
    return ContainerRun(name, f"{ctx.container_prefix}-{name}", init, tuple(argv))


def _probe(container: Mapping[str, Any]) -> HttpProbe | None:
    probe = container.get("readinessProbe")
    if not probe:
        return None
    get = probe.get("httpGet")
    if get is None:
        raise ConfigError(f"container {container['name']}: only httpGet readiness probes "
                          "are supported")
    port = get.get("port")
    if isinstance(port, str) and not port.isdigit():
        named = [p for p in container.get("ports") or [] if p.get("name") == port]
        if not named:
            raise ConfigError(f'container {container["name"]}: probe port "{port}" is not '
                              "one of its ports")
        port = named[0]["containerPort"]
    return HttpProbe(str(get.get("path") or "/"), int(port))


def unhonoured(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The pod-spec fields present that the lab does not act on, as field paths."""
    found = [f"spec.{key}" for key in spec if key not in _POD_FIELDS]
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            where = f"spec.{group}[{container.get('name')}]"
            found += [f"{where}.{key}" for key in container if key not in _CONTAINER_FIELDS]
            security = container.get("securityContext") or {}
            found += [f"{where}.securityContext.{key}" for key in security
                      if key not in _SECURITY_FIELDS]
    return tuple(found)


def pod_run(manifest: Manifest, ctx: PodContext) -> PodRun:
    """Everything to do on one node to run the DaemonSet's pod there."""
    spec = manifest.pod_spec
    if not spec.get("hostNetwork"):
        raise ConfigError("the lab runs hostNetwork pods only (the pod spec lacks hostNetwork)")
    service_account = str(spec.get("serviceAccountName") or spec.get("serviceAccount")
                          or "default")
    volumes = _volumes(spec, ctx, manifest)
    token_dir: str | None = None
    token_mount: list[str] = []
    if spec.get("automountServiceAccountToken", True):
        token_dir = os.path.join(ctx.pod_dir, "serviceaccount")
        token_mount = ["--volume", f"{token_dir}:{SERVICE_ACCOUNT_DIR}:ro"]
    runs = [
        _container_run(c, init, ctx, manifest, volumes, token_mount, service_account)
        for init, group in ((True, spec.get("initContainers")), (False, spec["containers"]))
        for c in _containers(group)
    ]
    mains = _containers(spec["containers"])
    return PodRun(
        pod_name=ctx.pod_name,
        namespace=manifest.namespace,
        service_account=service_account,
        host_paths=volumes.host_paths,
        files=volumes.files,
        token_dir=token_dir,
        containers=tuple(runs),
        readiness=_probe(mains[0]) if mains else None,
        ignored=unhonoured(spec),
    )


def _containers(group: Iterable[Any] | None) -> list[Mapping[str, Any]]:
    return [c for c in group or [] if isinstance(c, Mapping)]


def net_conf_backend(manifest: Manifest) -> str | None:
    """The backend type in the manifest's ``net-conf.json`` ConfigMap key, if it has one."""
    for (namespace, _), data in sorted(manifest.configmaps.items()):
        if namespace == manifest.namespace and "net-conf.json" in data:
            try:
                doc = json.loads(data["net-conf.json"])
            except ValueError as err:
                raise ConfigError(f"the manifest's net-conf.json is not JSON: {err}") from err
            backend = (doc.get("Backend") or {}).get("Type") if isinstance(doc, dict) else None
            return str(backend) if backend else None
    return None
