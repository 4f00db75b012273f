"""Layering contracts: which modules may import which third-party libraries."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flanneld", "subnet", "backends", "cni")

# library -> the only modules allowed to import it
ALLOWED = {
    "pyroute2": {"backends/netlink.py", "backends/topology.py"},
    "pyetcd": {"subnet/etcd.py"},
    "grpc": {"subnet/etcd.py"},
    "kubernetes": {"subnet/kube.py"},
    "urllib3": {"subnet/kube.py"},
    "scapy": set(),  # tests and diagnostics only, never the daemon
}
OWN = set(PACKAGES)


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def product_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("library", sorted(ALLOWED))
def test_library_is_confined_to_its_seam(library: str) -> None:
    offenders = {
        str(p.relative_to(ROOT))
        for p in product_modules()
        if library in imported_roots(p)
    } - ALLOWED[library]
    assert not offenders, f"{library} imported outside its seam: {sorted(offenders)}"


def test_cni_plugin_uses_only_the_standard_library() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in sorted((ROOT / "cni").rglob("*.py")):
        foreign = imported_roots(path) - stdlib - {"cni"}
        assert not foreign, f"{path.name} imports {sorted(foreign)}"


def test_pure_modules_do_no_io_imports() -> None:
    pure = [
        "backends/model.py", "backends/plan.py", "backends/peers.py", "backends/vxlan_state.py",
        "backends/hostgw_state.py", "backends/udp_packet.py", "subnet/lease.py",
        "subnet/allocator.py", "subnet/kube_model.py", "flanneld/config.py",
        "flanneld/peertable.py", "flanneld/trafficmgr/rules.py", "flanneld/lab/plan.py",
    ]
    io_libraries = {"pyroute2", "pyetcd", "grpc", "kubernetes", "subprocess", "socket", "urllib3"}
    for rel in pure:
        used = imported_roots(ROOT / rel) & io_libraries
        assert not used, f"{rel} is meant to be pure but imports {sorted(used)}"
