"""The CNI calling convention: env vars, versions, VERSION output and error JSON."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cni import errors
from cni.errors import CniError
from cni.plugin import run
from cni.protocol import (
    SUPPORTED_VERSIONS,
    check_version,
    error_json,
    validate_ifname,
    version_json,
)

CONF = {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel"}

ROOT = Path(__file__).resolve().parents[2]


def env(**overrides: str) -> dict[str, str]:
    base = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "ctr1",
        "CNI_NETNS": "/var/run/netns/pod",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/nonexistent",
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value != "<unset>"}


def invoke(environ: dict[str, str], stdin: bytes = b"") -> tuple[int, bytes, str]:
    stdout = io.BytesIO()
    stderr = io.StringIO()
    code = run(environ, io.BytesIO(stdin), stdout, stderr)
    return code, stdout.getvalue(), stderr.getvalue()


def error_of(environ: dict[str, str], conf: object = CONF) -> dict[str, object]:
    code, out, _ = invoke(environ, json.dumps(conf).encode())
    assert code == 1
    body = json.loads(out)
    assert set(body) == {"cniVersion", "code", "msg", "details"}
    return body  # type: ignore[no-any-return]


def test_version_lists_supported_versions_and_ignores_stdin() -> None:
    code, out, _ = invoke({"CNI_COMMAND": "VERSION"}, b"not json at all")
    assert code == 0
    assert json.loads(out) == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


def test_version_answer_is_byte_for_byte_what_json_dumps_writes() -> None:
    info = {"cniVersion": SUPPORTED_VERSIONS[-1], "supportedVersions": list(SUPPORTED_VERSIONS)}
    assert version_json() == json.dumps(info, separators=(",", ":")).encode() + b"\n"


def test_version_imports_neither_json_nor_the_add_path() -> None:
    code = (
        "import os, sys, io; os.environ['CNI_COMMAND'] = 'VERSION'\n"
        "from cni.plugin import run\n"
        "run(os.environ, io.BytesIO(), io.BytesIO(), sys.stderr)\n"
        "heavy = {'json', 're', 'ipaddress', 'cni.gojson', 'cni.cache', 'cni.render'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    # -S: no site (a venv's site imports re and more); the checkout is on the path via cwd
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"


def test_no_command_prints_about_to_stderr_and_succeeds() -> None:
    code, out, err = invoke({})
    assert (code, out) == (0, b"")
    assert "CNI Plugin flannel" in err
    assert "CNI protocol versions supported: 0.1.0, 0.2.0" in err


def test_missing_variables_are_named_together_in_spec_order() -> None:
    body = error_of(env(CNI_NETNS="<unset>", CNI_PATH="<unset>"))
    assert body["code"] == errors.INVALID_ENVIRONMENT
    assert body["msg"] == "required env variables [CNI_NETNS,CNI_PATH] missing"


def test_del_does_not_need_netns() -> None:
    body = error_of(env(CNI_COMMAND="DEL", CNI_NETNS="<unset>", CNI_IFNAME="<unset>"))
    assert body["msg"] == "required env variables [CNI_IFNAME] missing"


def test_unknown_command_is_an_environment_error() -> None:
    body = error_of(env(CNI_COMMAND="FROB"))
    assert body["code"] == errors.INVALID_ENVIRONMENT
    assert "FROB" in str(body["msg"])


@pytest.mark.parametrize(
    ("container_id", "code"),
    [
        ("../x", errors.INVALID_ENVIRONMENT),
        ("a/b", errors.INVALID_ENVIRONMENT),
        ("-leading-dash", errors.INVALID_ENVIRONMENT),
        (".hidden", errors.INVALID_ENVIRONMENT),
        ("x" * 300, errors.INVALID_ENVIRONMENT),
        ("cafébabe", errors.INVALID_ENVIRONMENT),
    ],
)
def test_bad_container_ids_are_refused_before_anything_else(
    container_id: str, code: int, tmp_path: Path
) -> None:
    conf = {**CONF, "dataDir": str(tmp_path / "cache")}
    body = error_of(env(CNI_CONTAINERID=container_id), conf)
    assert body["code"] == code
    assert "containerID" in str(body["msg"])
    assert not (tmp_path / "cache").exists()


def test_empty_container_id_is_missing() -> None:
    body = error_of(env(CNI_CONTAINERID=""))
    assert body["msg"] == "required env variables [CNI_CONTAINERID] missing"


@pytest.mark.parametrize("ifname", ["", "a" * 16, ".", "..", "eth/0", "eth:0", "eth 0"])
def test_bad_interface_names(ifname: str) -> None:
    with pytest.raises(CniError) as caught:
        validate_ifname(ifname)
    assert caught.value.code == errors.INVALID_ENVIRONMENT


def test_fifteen_character_interface_name_is_fine() -> None:
    assert validate_ifname("a" * 15) == "a" * 15


def test_stdin_that_is_not_json_is_a_decoding_failure() -> None:
    code, out, _ = invoke(env(), b"{nope")
    body = json.loads(out)
    assert code == 1
    assert body["code"] == errors.DECODING_FAILURE
    assert body["cniVersion"] == "1.1.0"  # no version known: the newest


@pytest.mark.parametrize(
    ("conf", "code"),
    [
        (["a list"], errors.DECODING_FAILURE),
        ({"cniVersion": "1.0.0"}, errors.INVALID_NETWORK_CONFIG),
        ({"cniVersion": "1.0.0", "name": 5}, errors.DECODING_FAILURE),
        ({"cniVersion": "1.0.0", "name": "bad name"}, errors.INVALID_NETWORK_CONFIG),
        ({**CONF, "delegate": "bridge"}, errors.INVALID_NETWORK_CONFIG),
        ({**CONF, "subnetFile": 7}, errors.INVALID_NETWORK_CONFIG),
        ({**CONF, "dataDir": ""}, errors.INVALID_NETWORK_CONFIG),
    ],
)
def test_bad_configs(conf: object, code: int) -> None:
    assert error_of(env(), conf)["code"] == code


def test_error_json_echoes_the_config_version(tmp_path: Path) -> None:
    subnet_env = tmp_path / "subnet.env"
    subnet_env.write_text(
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    conf = {
        **CONF,
        "cniVersion": "0.3.1",
        "subnetFile": str(subnet_env),
        "dataDir": str(tmp_path / "cache"),
        "delegate": {"name": "x"},
    }
    assert error_of(env(), conf) == {
        "cniVersion": "0.3.1",
        "code": errors.INVALID_NETWORK_CONFIG,
        "msg": "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
        "details": "",
    }
    assert not (tmp_path / "cache").exists()


def test_unsupported_version_is_incompatible() -> None:
    body = error_of(env(), {**CONF, "cniVersion": "9.9.9"})
    assert body["code"] == errors.INCOMPATIBLE_VERSION
    assert body["cniVersion"] == "1.1.0"
    assert '"9.9.9"' in str(body["details"])


@pytest.mark.parametrize("version", ["0.3.1", ""])
def test_check_needs_at_least_040(version: str) -> None:
    body = error_of(env(CNI_COMMAND="CHECK"), {**CONF, "cniVersion": version})
    assert body["code"] == errors.INCOMPATIBLE_VERSION
    assert body["msg"] == "config version does not allow CHECK"


def test_every_supported_version_is_accepted_for_add() -> None:
    for version in SUPPORTED_VERSIONS:
        check_version(version, "ADD")


def test_gc_and_status_need_110_and_then_succeed_quietly() -> None:
    assert error_of(env(CNI_COMMAND="STATUS"))["code"] == errors.INCOMPATIBLE_VERSION
    for command in ("GC", "STATUS"):
        code, out, _ = invoke(
            env(CNI_COMMAND=command), json.dumps({**CONF, "cniVersion": "1.1.0"}).encode()
        )
        assert (code, out) == (0, b"")


def test_error_json_shape() -> None:
    error = CniError(errors.INVALID_ENVIRONMENT, "required env variables [CNI_NETNS] missing")
    assert json.loads(error_json(error, "0.4.0")) == {
        "cniVersion": "0.4.0",
        "code": 4,
        "msg": "required env variables [CNI_NETNS] missing",
        "details": "",
    }


def test_add_imports_neither_re_nor_enum() -> None:
    """ADD's modules use the C parts of json and signal, parse CIDRs themselves and
    call ``posix``: ``re``, ``enum``, ``ipaddress`` (with ``functools`` and
    ``collections``) and ``os`` cost milliseconds of every pod's start (issue 13)."""
    code = (
        "import sys\n"
        "import cni.plugin, cni.gojson, cni.cache, cni.invoke, cni.render, cni.subnetenv\n"
        "import cni.stdin_config\n"
        "heavy = {'json', 're', 'enum', 'signal', 'subprocess', 'logging', 'ipaddress',\n"
        "         'functools', 'collections', 'os'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"
