"""The single-file plugin: built by ``python3 -m cni.bundle`` and run with a bare interpreter."""

from __future__ import annotations

import glob
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def oldest_python3() -> str:
    """The oldest ``python3.N`` on PATH that runs (Debian 12 offers only 3.11).

    The plugin runs with whatever ``python3`` a node has, so the bundle is
    tried with the oldest one this machine can install; none at all is a
    failure, not a skip.
    """
    found: dict[int, str] = {}
    for directory in os.environ.get("PATH", "/usr/bin").split(os.pathsep):
        for path in glob.glob(os.path.join(directory, "python3.[0-9]*")):
            minor = os.path.basename(path).removeprefix("python3.")
            if minor.isdigit() and int(minor) not in found and os.access(path, os.X_OK):
                found[int(minor)] = path
    for _, path in sorted(found.items()):
        if subprocess.run([path, "-c", ""], capture_output=True, check=False).returncode == 0:
            return path
    pytest.fail(f"no runnable python3.N on PATH ({os.environ.get('PATH')})")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "flannel"
    subprocess.run([sys.executable, "-m", "cni.bundle", str(out)], cwd=REPO, check=True)
    return out


def run_bundle(
    args: list[str], env: dict[str, str], cwd: Path, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        args, check=False, env=env, cwd=cwd, input=stdin, capture_output=True, timeout=30
    )


def test_bundle_is_an_executable_zipapp_of_the_package(bundle: Path) -> None:
    assert bundle.read_bytes().startswith(b"#!/usr/bin/env -S python3 -I -S\n")
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o755
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
    assert {"__main__.py", "cni/__init__.py", "cni/plugin.py", "cni/render.py"} <= names
    assert "cni/plugin.pyc" in names
    assert "cni/bundle.py" not in names


def test_same_sources_give_the_same_bundle(bundle: Path, tmp_path: Path) -> None:
    again = tmp_path / "flannel"
    subprocess.run([sys.executable, "-m", "cni.bundle", str(again)], cwd=REPO, check=True)
    assert again.read_bytes() == bundle.read_bytes()


@pytest.mark.parametrize("flags", [["-I"], ["-I", "-S"]])
def test_version_with_a_bare_interpreter_from_a_clean_directory(
    bundle: Path, tmp_path: Path, flags: list[str]
) -> None:
    # -S also drops site-packages (and the editable install of this repo),
    # so this proves the file is self-contained.
    proc = run_bundle([sys.executable, *flags, str(bundle)], {"CNI_COMMAND": "VERSION"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["supportedVersions"][-1] == "1.1.0"


def test_shebang_execution(bundle: Path, tmp_path: Path) -> None:
    # The runtime execs the file: env finds python3 on PATH and (-S) runs it without
    # site, so no .pth file of the node's Python runs first.
    env = {"CNI_COMMAND": "VERSION", "PATH": os.environ["PATH"]}
    proc = run_bundle([str(bundle)], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cniVersion"] == "1.1.0"


@pytest.mark.parametrize("python", ["current", "oldest"])
def test_add_and_del_through_the_bundle_with_a_stub_delegate(
    bundle: Path, tmp_path: Path, python: str
) -> None:
    interpreter = sys.executable if python == "current" else oldest_python3()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "bridge"
    stub.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        "data = sys.stdin.read()\n"
        "sys.stdout.write(os.environ['CNI_COMMAND'] + ' ' + str(len(data)) if 'ipam' in data else 'x')\n"
    )
    stub.chmod(0o755)
    (tmp_path / "subnet.env").write_text(
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
    )
    conf = {
        "cniVersion": "0.3.1",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": str(tmp_path / "subnet.env"),
        "dataDir": str(tmp_path / "cache"),
    }
    env = {
        "CNI_CONTAINERID": "ctr1",
        "CNI_NETNS": "/var/run/netns/x",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(bin_dir),
    }
    clean = tmp_path / "cwd"
    clean.mkdir()
    # Another minor version ignores the bundled bytecode and compiles the sources.
    args = [interpreter, "-I", str(bundle)]
    added = run_bundle(args, {**env, "CNI_COMMAND": "ADD"}, clean, json.dumps(conf).encode())
    assert added.returncode == 0, added.stdout
    cached = (tmp_path / "cache" / "ctr1").read_bytes()
    assert added.stdout == f"ADD {len(cached)}".encode()
    deleted = run_bundle(args, {**env, "CNI_COMMAND": "DEL"}, clean, json.dumps(conf).encode())
    assert (deleted.returncode, deleted.stdout) == (0, f"DEL {len(cached)}".encode())
    assert not (tmp_path / "cache" / "ctr1").exists()


def test_plugin_imports_only_the_standard_library_and_itself() -> None:
    code = (
        "import sys; before = set(sys.modules); sys.path.insert(0, sys.argv[1]);"
        "import cni.plugin; print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(REPO)],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = proc.stdout.split()
    foreign = [
        name
        for name in loaded
        if name.partition(".")[0] not in sys.stdlib_module_names and name.partition(".")[0] != "cni"
    ]
    assert foreign == []
    # Start-up guard: none of the heavy modules the plugin deliberately avoids.
    heavy = {"subprocess", "logging", "dataclasses", "typing", "inspect", "tempfile"}
    assert heavy.isdisjoint(loaded)
