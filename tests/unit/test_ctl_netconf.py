"""``flannelctl netconf validate``: describe a good net-conf.json, or print the error."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from flanneld.ctl import EXIT_FAILED, EXIT_OK, main

GOOD = '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4}}'


def run(
    capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    code = main(["netconf", "validate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_valid_file_is_described(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "net-conf.json"
    path.write_text(GOOD)
    code, out, err = run(capsys, str(path))
    assert code == EXIT_OK
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "Network:      10.244.0.0/16"
    assert "Traffic rules: iptables" in lines
    assert lines[-1].startswith("Backend:      vxlan (vni=4, ")
    # kube mode (the default) assigns no subnet ranges: podCIDRs come from the Nodes.
    assert "node subnets" not in out


def test_etcd_mode_adds_the_subnet_ranges(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "net-conf.json"
    path.write_text(GOOD)
    code, out, _ = run(capsys, "--mode", "etcd", str(path))
    assert code == EXIT_OK
    assert "  IPv4 node subnets: /24 from 10.244.1.0 to 10.244.255.0" in out.splitlines()


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        ('{"Network": "10.0.0.0/8", "Backend": {"Type": "bogus"}}', "kube",
         "unknown backend type: bogus"),
        ('{"Network": "10.244.0.0/29"}', "etcd", "network is too small"),
        ('{"Network": "10.244.0.0/16", "Backend": {"Type": 7}}', "kube",
         "error decoding Backend property of config: Type must be a string"),
        ("{nope", "kube", "net-conf.json is not valid JSON"),
    ],
)
def test_invalid_prints_the_error_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, mode: str, message: str
) -> None:
    path = tmp_path / "net-conf.json"
    path.write_text(text)
    code, out, err = run(capsys, "--mode", mode, str(path))
    assert code == EXIT_FAILED
    assert out == ""
    assert err.startswith(message), err
    assert err.count("\n") == 1


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(GOOD.encode())))
    code, out, _ = run(capsys, "-")
    assert code == EXIT_OK
    assert out.startswith("Network:      10.244.0.0/16\n")


def test_stdin_invalid(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"Backend": {}}')))
    code, out, err = run(capsys, "-")
    assert code == EXIT_FAILED
    assert out == ""
    assert "Network is required" in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.json"
    code, out, err = run(capsys, str(missing))
    assert code == EXIT_FAILED
    assert out == ""
    assert err == f"cannot read {missing}: No such file or directory\n"


def test_mode_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["netconf", "validate", "--mode", "zk", "-"])
    assert caught.value.code == 2
    assert "invalid choice: 'zk'" in capsys.readouterr().err
