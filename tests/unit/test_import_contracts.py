"""Layering contracts: which modules may import which third-party libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flanneld", "subnet", "backends", "cni")

# library -> the only modules allowed to import it
ALLOWED = {
    "pyroute2": {"backends/netlink.py", "flanneld/lab/topology.py"},
    "pyetcd": {"subnet/etcd.py"},
    "grpc": {"subnet/etcd.py"},
    "kubernetes": {"subnet/kube.py"},
    "urllib3": {"subnet/kube.py"},
    "scapy": set(),  # tests and diagnostics only, never the daemon
    "yaml": {"flanneld/lab/podspec.py"},  # the lab reads the shipped manifest
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


# package -> our packages it must never import (layers point one way:
# subnet <- backends <- flanneld; cni stands alone)
FORBIDDEN_LAYERS = {
    "subnet": {"backends", "flanneld", "cni", "tests", "bench"},
    "backends": {"flanneld", "cni", "tests", "bench"},
    "flanneld": {"cni", "tests", "bench"},
    "cni": {"subnet", "backends", "flanneld", "tests", "bench"},
}


def layer_violations(package: str) -> list[str]:
    """``module imports name`` for each import that breaks ``package``'s layer rule."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_names(path):
            if name.split(".")[0] in FORBIDDEN_LAYERS[package]:
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def imported_names(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at module level or inside a function."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN_LAYERS))
def test_layers_point_one_way(package: str) -> None:
    offenders = layer_violations(package)
    assert not offenders, "layering broken:\n" + "\n".join(offenders)


def test_layer_check_names_the_offending_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from flanneld.daemon import run\n")
    assert imported_names(bad) == {"flanneld.daemon"}


def test_the_lab_api_server_ships_with_the_standard_library_only() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in sorted((ROOT / "flanneld" / "lab" / "apiserver").rglob("*.py")):
        foreign = imported_roots(path) - stdlib
        assert not foreign, f"{path.name} imports {sorted(foreign)}"


def test_cni_plugin_uses_only_the_standard_library() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in sorted((ROOT / "cni").rglob("*.py")):
        foreign = imported_roots(path) - stdlib - {"cni"}
        assert not foreign, f"{path.name} imports {sorted(foreign)}"


def test_pure_modules_do_no_io_imports() -> None:
    pure = [
        "backends/model.py", "backends/plan.py", "backends/peers.py", "backends/vxlan_state.py",
        "backends/rtnl.py", "backends/rtlink.py",
        "backends/hostgw_state.py", "backends/udp_packet.py", "backends/wireguard_state.py",
        "subnet/lease.py", "subnet/allocator.py", "subnet/kube_state.py", "subnet/etcd_state.py",
        "subnet/netconf.py",
        "flanneld/peertable.py", "flanneld/loop_state.py", "flanneld/trafficmgr/rules.py",
        "flanneld/lab/layout.py", "flanneld/lab/podspec.py",
        "flanneld/netpol/model.py", "flanneld/netpol/ruleset.py", "flanneld/netpol/script.py",
        "flanneld/netpol/explain.py",
        "flanneld/doctor/model.py", "flanneld/doctor/profile.py", "flanneld/doctor/checks.py",
        "flanneld/doctor/hostchecks.py", "flanneld/doctor/render.py",
    ]
    io_libraries = {"pyroute2", "pyetcd", "grpc", "kubernetes", "subprocess", "socket", "urllib3"}
    for rel in pure:
        used = imported_roots(ROOT / rel) & io_libraries
        assert not used, f"{rel} is meant to be pure but imports {sorted(used)}"


def test_test_module_names_are_unique() -> None:
    """pytest imports test modules by basename (no packages under tests/): a clash breaks
    collection of the whole suite, so it is caught here, in the fast unit run."""
    seen: dict[str, str] = {}
    clashes = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        rel = str(path.relative_to(ROOT))
        if path.name in seen:
            clashes.append(f"{seen[path.name]} and {rel}")
        seen.setdefault(path.name, rel)
    assert not clashes, "test modules share a basename: " + "; ".join(clashes)


def test_etcd_mode_start_imports_only_what_it_runs() -> None:
    """``flanneld.daemon`` loads no opt-in part (network policy, the Kubernetes side, the
    backends net-conf.json does not name) and not pyroute2's whole package: each costs
    start-up time and resident memory on every node (issue 13)."""
    script = (
        "import sys, flanneld.daemon\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                       check=True, timeout=60).stdout.split()
    )
    unwanted = [
        "flanneld.netpol.controller", "flanneld.netpol.model", "flanneld.trafficmgr.policy",
        "subnet.kube", "subnet.kube_state", "kubernetes", "backends.udp",
        "backends.wireguard", "backends.wireguard_state", "backends.hostgw", "backends.vxlan",
        "pyroute2.ndb",
        "pyroute2.ipdb", "pyroute2.conntrack",
    ]
    assert "backends.netlink" in loaded
    assert not [name for name in unwanted if name in loaded]


def test_removing_the_policy_table_loads_no_policy_engine() -> None:
    """A kube-mode daemon without ``--network-policy`` removes a left-over table after its
    first pass; importing the policy engine for that (20-50 ms of the GIL) held up the
    lease events that came meanwhile (issue 13: one added Node, p99)."""
    script = (
        "import sys\n"
        "from flanneld.trafficmgr.policy import PolicyTable\n"
        "from flanneld.trafficmgr.runner import CommandResult\n"
        "class Runner:\n"
        "    calls = []\n"
        "    def run(self, argv, stdin=None):\n"
        "        self.calls.append(argv)\n"
        "        return CommandResult(0, '', '')\n"
        "    def check(self, argv, stdin=None):\n"
        "        self.calls.append([*argv, stdin])\n"
        "        return CommandResult(0, '', '')\n"
        "runner = Runner()\n"
        "assert PolicyTable(runner).remove()\n"
        "print(runner.calls[-1][-1].replace(chr(10), ';'))\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60).stdout.split("\n")
    assert out[0] == "add table inet pyflannel-policy;delete table inet pyflannel-policy;"
    loaded = set(out[1:])
    assert "flanneld.trafficmgr.policy" in loaded
    engine = ["flanneld.netpol.model", "flanneld.netpol.ruleset", "flanneld.netpol.script"]
    assert [name for name in engine if name in loaded] == []


def test_the_daemon_starts_without_pyroute2s_request_layer_or_asyncio() -> None:
    """Links, addresses and route lookups are encoded by ``backends.rtlink`` and sent over
    the seam's own socket: pyroute2's ``IPRoute`` (which pulls in asyncio, ~115 modules,
    about 0.1 s and several MiB) is not loaded by the daemon and its backends (issue 13);
    the kernel WireGuard driver loads pyroute2's generic netlink when it is first used."""
    script = (
        "import sys, flanneld.daemon, backends.vxlan, backends.hostgw, backends.udp\n"
        "import backends.wireguard, backends.wireguard_go\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                       check=True, timeout=60).stdout.split()
    )
    assert "backends.netlink" in loaded and "backends.wireguard_go" in loaded
    unwanted = ["pyroute2.iproute", "pyroute2.netlink.nlsocket", "pyroute2.netlink.generic",
                "asyncio"]
    assert [name for name in unwanted if name in loaded] == []


def test_pyroute2_whole_package_still_imports_after_the_seam() -> None:
    """The seam defers pyroute2's package ``__init__``; ``from pyroute2 import X`` elsewhere
    (the lab, tests) still gets X, and a subpackage alone stays cheap."""
    script = (
        "import sys, backends.netlink\n"
        "from pyroute2 import netns\n"
        "assert 'pyroute2.ndb' not in sys.modules, 'a subpackage ran the whole __init__'\n"
        "from pyroute2 import IPRoute, NDB\n"
        "from pyroute2.iproute.linux import IPRoute as Linux\n"
        "assert IPRoute is Linux and NDB.__name__ == 'NDB' and netns.setns\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=60)
