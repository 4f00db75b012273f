"""What kube mode loads of the Kubernetes client (issue 13: start-up time and RSS)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("pydantic", "yaml", "requests", "oauthlib", "websocket", "kubernetes.dynamic",
         "kubernetes.stream", "kubernetes.watch", "kubernetes.config.kube_config",
         "kubernetes.client.api_client", "kubernetes.client.models",
         "kubernetes.utils.create_from_yaml")


def _modules_after(script: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", script + "\nprint('\\n'.join(sys.modules))"],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    return set(out.stdout.split())


def test_api_client_without_kubeconfig_loads_only_the_transport() -> None:
    """In a pod (or with --kube-api-url alone) the manager's client is the official
    Configuration and RESTClientObject: no kubeconfig loader, pydantic or models."""
    loaded = _modules_after(
        "import sys\n"
        "from subnet.kube import build_api_client\n"
        "from subnet.kube_state import KubeSettings\n"
        "build_api_client(KubeSettings(api_url='http://127.0.0.1:1')).close()\n"
    )
    assert "kubernetes.client.rest" in loaded
    assert "kubernetes.client.configuration" in loaded
    assert not [name for name in HEAVY if name in loaded]


def test_kubeconfig_loads_the_loader(tmp_path: Path) -> None:
    """A kubeconfig file is read by the client's own loader (imported when needed)."""
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t0}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    loaded = _modules_after(
        "import sys\n"
        "from subnet.kube import build_api_client\n"
        "from subnet.kube_state import KubeSettings\n"
        f"rest = build_api_client(KubeSettings(kubeconfig_file={str(config)!r}))\n"
        "assert rest.configuration.host == 'http://127.0.0.1:1', rest.configuration.host\n"
        "assert rest.configuration.auth_settings()['BearerToken']['value'] == 'Bearer t0'\n"
        "rest.close()\n"
    )
    assert "kubernetes.config.kube_config" in loaded


def test_whole_client_still_imports_after_the_manager() -> None:
    """The manager defers the client's package __init__ files; code that wants the whole
    client afterwards (tests, the lab) still gets every part of it."""
    _modules_after(
        "import sys, subnet.kube\n"
        "assert 'kubernetes.config.kube_config' not in sys.modules\n"
        "from kubernetes import client, config, watch\n"
        "import kubernetes\n"
        "assert client.CoreV1Api and client.ApiClient and watch.Watch\n"
        "assert config.load_kube_config and config.ConfigException\n"
        "assert kubernetes.__version__ and kubernetes.utils.create_from_yaml\n"
    )
