"""The single-file plugin: built by ``python3 -m cni.bundle`` and run with a bare interpreter."""

from __future__ import annotations

import glob
import json
import linecache
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def bundle_data(text: str) -> dict[str, Any]:
    """The plugin file's data (what it defines before its start code)."""
    namespace: dict[str, Any] = {"__name__": "not-main"}
    exec(compile(text, "flannel", "exec"), namespace)  # noqa: S102 - the file we just built
    return namespace


def test_bundle_is_an_executable_script_carrying_the_package(bundle: Path) -> None:
    text = bundle.read_text()
    assert text.startswith("#!/usr/bin/env -S python3 -I -S\n")
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o755
    data = bundle_data(text)
    modules = {"cni"} | {f"cni.{path.stem}" for path in (REPO / "cni").glob("*.py")}
    modules -= {"cni.__init__", "cni.bundle"}  # bundle.py is build-time only
    assert set(data["COMPILED"]) == modules
    assert data["PACKAGES"] == frozenset({"cni"})


def test_version_imports_nothing_the_interpreter_does_not_already_have(
    bundle: Path, tmp_path: Path
) -> None:
    # No runpy, zipimport of an archive, importlib package, os or __future__: only
    # built-in modules and the bundle's own (-X importtime lists every import).
    def imported(args: list[str]) -> set[str]:
        proc = run_bundle(
            [sys.executable, "-I", "-S", "-X", "importtime", *args],
            {"CNI_COMMAND": "VERSION"},
            tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.decode().splitlines()[1:]
        return {line.rpartition("|")[2].strip() for line in lines}

    extra = imported([str(bundle)]) - imported(["-c", "pass"])
    assert {"cni", "cni.plugin", "cni.protocol"} <= extra
    foreign = {name for name in extra if name.partition(".")[0] != "cni"}
    assert foreign <= set(sys.builtin_module_names) | {"binascii", "zlib"}


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


def test_output_the_runtime_cannot_receive_is_a_failed_call(bundle: Path, tmp_path: Path) -> None:
    # The plugin skips the interpreter's teardown, but not the flush: a result that
    # cannot be written (stdout on a full device) must not end as a success.
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", str(bundle)],
            env={"CNI_COMMAND": "VERSION"},
            cwd=tmp_path,
            stdout=full,
            stderr=subprocess.PIPE,
            check=False,
            timeout=30,
        )
    assert proc.returncode == 120, proc.stderr


def test_shebang_execution(bundle: Path, tmp_path: Path) -> None:
    # The runtime execs the file: env finds python3 on PATH and (-S) runs it without
    # site, so no .pth file of the node's Python runs first.
    env = {"CNI_COMMAND": "VERSION", "PATH": os.environ["PATH"]}
    proc = run_bundle([str(bundle)], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cniVersion"] == "1.1.0"


def from_sources(bundle: Path, out: Path) -> Path:
    """The bundle as a Python with another bytecode format sees it: sources only."""
    text = bundle.read_text()
    magic = f"MAGIC = {bundle_data(text)['MAGIC']!r}\n"
    assert text.count(magic) == 1
    out.write_text(text.replace(magic, "MAGIC = b'none'\n"))
    return out


@pytest.mark.parametrize("python", ["current", "oldest", "sources"])
def test_add_and_del_through_the_bundle_with_a_stub_delegate(
    bundle: Path, tmp_path: Path, python: str
) -> None:
    interpreter = oldest_python3() if python == "oldest" else sys.executable
    if python == "sources":
        bundle = from_sources(bundle, tmp_path / "flannel")
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
    # Another bytecode format ignores the bundled bytecode and compiles the sources.
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


@pytest.mark.parametrize("magic", ["builder", "another"])
def test_importer_serves_the_modules_with_their_file_name_and_source(
    bundle: Path, magic: str
) -> None:
    from cni.loader import BundleImporter

    data = bundle_data(bundle.read_text())
    importer = BundleImporter(
        "/opt/cni/bin/flannel",
        data["MAGIC"] if magic == "builder" else b"none",
        data["COMPILED"],
        data["SOURCES"],
        data["PACKAGES"],
    )
    assert importer.find_spec("os") is None
    package = importer.find_spec("cni")
    assert package is not None and package.submodule_search_locations == []
    spec = importer.find_spec("cni.protocol")
    assert spec is not None and spec.origin == "/opt/cni/bin/flannel/cni/protocol.py"
    source = (REPO / "cni" / "protocol.py").read_text()
    assert importer.get_source("cni.protocol") == source
    code = importer.get_code("cni.protocol")
    assert code.co_filename == spec.origin
    # What a traceback prints: linecache asks the module's loader for the lines.
    line = linecache.getline(code.co_filename, 1, {"__name__": "cni.protocol", "__loader__": importer})
    assert line == source.splitlines(keepends=True)[0]
    namespace: dict[str, Any] = {"__name__": "cni.protocol"}
    exec(code, namespace)  # noqa: S102 - the module's own code
    assert namespace["SUPPORTED_VERSIONS"][-1] == "1.1.0"


def test_version_without_cpythons_importlib_core(bundle: Path, tmp_path: Path) -> None:
    # An interpreter without _frozen_importlib(_external) (not CPython): the file compiles
    # cni.loader from its source, which takes the names from the importlib package.
    code = (
        "import sys\n"
        "sys.modules['_frozen_importlib_external'] = sys.modules['_frozen_importlib'] = None\n"
        "path = sys.argv[1]\n"
        "exec(compile(open(path).read(), path, 'exec'), {'__name__': '__main__', '__file__': path})\n"
    )
    proc = run_bundle(
        [sys.executable, "-I", "-S", "-X", "importtime", "-c", code, str(bundle)],
        {"CNI_COMMAND": "VERSION"},
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cniVersion"] == "1.1.0"
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.decode().splitlines()}
    assert {"importlib.machinery", "importlib.util"} <= imported
