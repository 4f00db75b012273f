"""The lab as a user gets it: a wheel installed into a virtualenv outside the checkout.

The wheel is built from this checkout and installed without the checkout on
any path, so the lab's pieces (the API server double, topology, etcd
gateway) must all ship in the package.  Its dependencies are borrowed from
the test environment's site-packages through a plain path entry, which
does not run the checkout's editable-install hook.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from flanneld.lab.lab import down
from flanneld.lab.layout import is_lab_netns
from flanneld.lab.topology import list_netns
from tests.conftest import RUN_PREFIX, needs_root

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin directory of a virtualenv holding only the built wheel."""
    needs_root()
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(work / "dist"), str(ROOT)],
        check=True, cwd=work,
    )
    wheel = next((work / "dist").glob("pyflannel-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
         "--no-deps", "--no-index", str(wheel)],
        check=True, cwd=work,
    )
    yield venv / "bin"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def test_the_installed_package_is_not_the_checkout(installed: Path) -> None:
    where = subprocess.run(
        [str(installed / "python"), "-c",
         "import flanneld.lab.apiserver.serve as m, subnet; print(m.__file__, subnet.__file__)"],
        check=True, capture_output=True, text=True, cwd="/", env=_clean_env(),
    ).stdout.split()
    assert all(not path.startswith(str(ROOT)) for path in where), where
    assert all("site-packages" in path for path in where), where


@pytest.mark.parametrize("subnet_mgr", ["etcd", "kube"])
def test_lab_up_from_the_installed_wheel(installed: Path, subnet_mgr: str) -> None:
    prefix = f"{RUN_PREFIX}w{subnet_mgr[0]}"
    try:
        done = subprocess.run(
            [str(installed / "flannelctl"), "lab", "up", "--nodes", "2",
             "--subnet-mgr", subnet_mgr, "--prefix", prefix, "--down-after"],
            check=False, capture_output=True, text=True, cwd="/", env=_clean_env(),
            timeout=480,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "all pods reach each other" in done.stdout
    finally:
        down(prefix)
    assert not [n for n in list_netns() if is_lab_netns(prefix, n)]
