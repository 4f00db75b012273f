"""flanneld's command line: Go flag syntax, FLANNELD_* env, validation, main()'s exit codes."""

from __future__ import annotations

import dataclasses
import gc
import io
import logging
import sys
import types
from collections.abc import Callable

import pytest

import flanneld
from flanneld import cli
from flanneld import flags as flags_mod
from flanneld.flags import Flags, FlagsExit, parse_flags
from subnet.errors import (
    ConfigError,
    FlannelError,
    InterfaceError,
    LeaseError,
    StoreError,
    SubnetsExhaustedError,
)


def parse(*argv: str, env: dict[str, str] | None = None) -> Flags:
    return parse_flags(list(argv), env or {})


def usage_exit(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    err = io.StringIO()
    with pytest.raises(FlagsExit) as exc:
        parse_flags(list(argv), env or {}, stderr=err)
    assert isinstance(exc.value.code, int)
    return exc.value.code, err.getvalue()


# --- defaults ----------------------------------------------------------------------


def test_defaults_are_upstreams() -> None:
    flags = parse()
    assert flags.etcd_endpoints == "http://127.0.0.1:4001,http://127.0.0.1:2379"
    assert flags.etcd_prefix == "/coreos.com/network"
    assert flags.subnet_file == "/run/flannel/subnet.env"
    assert flags.subnet_lease_renew_margin == 60
    assert flags.kube_annotation_prefix == "flannel.alpha.coreos.com"
    assert flags.healthz_ip == "0.0.0.0"
    assert flags.healthz_port == 0
    assert flags.iptables_resync == 5
    assert flags.iptables_forward_rules is True
    assert flags.set_node_network_unavailable is True
    assert flags.net_config_path == "/etc/kube-flannel/net-conf.json"
    assert flags.ip_masq is False and flags.kube_subnet_mgr is False
    assert flags.ip_blackhole_route is False and flags.ip_masq_fully_random_disable is False
    assert flags.iface == () and flags.iface_regex == ()
    assert flags.v == 0
    assert flags.resync_interval == 10.0


def test_every_upstream_flag_exists() -> None:
    upstream = {
        "etcd-endpoints", "etcd-prefix", "etcd-keyfile", "etcd-certfile", "etcd-cafile",
        "etcd-username", "etcd-password", "iface", "iface-regex", "iface-can-reach",
        "subnet-file", "public-ip", "public-ipv6", "subnet-lease-renew-margin", "ip-masq",
        "ip-masq-fully-random-disable", "kube-subnet-mgr", "kube-api-url",
        "kube-annotation-prefix", "kubeconfig-file", "healthz-ip", "healthz-port",
        "iptables-resync", "iptables-forward-rules", "ip-blackhole-route", "net-config-path",
        "set-node-network-unavailable", "v", "vmodule", "log_backtrace_at",
    }
    for name in upstream:
        parse(f"--{name}=1")  # every one of them is accepted (1 is valid for all kinds)


def test_flags_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse().ip_masq = True  # type: ignore[misc]


# --- syntax ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["-etcd-endpoints=http://e:1"],
        ["--etcd-endpoints=http://e:1"],
        ["-etcd-endpoints", "http://e:1"],
        ["--etcd-endpoints", "http://e:1"],
    ],
)
def test_value_forms(argv: list[str]) -> None:
    assert parse(*argv).etcd_endpoints == "http://e:1"


def test_value_may_start_with_dash_or_contain_equals() -> None:
    flags = parse("-etcd-prefix", "-odd", "--kube-api-url=https://h/?a=b")
    assert flags.etcd_prefix == "-odd"
    assert flags.kube_api_url == "https://h/?a=b"


def test_last_value_wins_for_single_flags() -> None:
    assert parse("-etcd-prefix=/a", "-etcd-prefix=/b").etcd_prefix == "/b"


def test_repeatable_iface_keeps_order() -> None:
    flags = parse("--iface=eth1", "-iface", "10.0.0.1", "--iface-regex=^en", "-iface-regex", "x")
    assert flags.iface == ("eth1", "10.0.0.1")
    assert flags.iface_regex == ("^en", "x")


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_go_true_spellings(text: str) -> None:
    assert parse(f"-ip-masq={text}").ip_masq is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_go_false_spellings(text: str) -> None:
    assert parse(f"--iptables-forward-rules={text}").iptables_forward_rules is False


def test_bare_bool_is_true() -> None:
    flags = parse("-ip-masq", "--kube-subnet-mgr")
    assert flags.ip_masq is True and flags.kube_subnet_mgr is True


@pytest.mark.parametrize("text", ["yes", "tRuE", "on", "", "2"])
def test_bad_bool_is_a_usage_error(text: str) -> None:
    code, err = usage_exit(f"-ip-masq={text}")
    assert code == 2
    assert "ip-masq" in err and "Usage:" in err


def test_bool_does_not_take_the_next_argument() -> None:
    code, err = usage_exit("-ip-masq", "false")
    assert code == 2
    assert "-flag=false" in err  # the hint says how to write it


@pytest.mark.parametrize(
    ("text", "value"),
    [("8081", 8081), ("0x1f", 31), ("010", 8), ("0o10", 8), ("0b11", 3), ("1_000", 1000),
     ("+7", 7), ("-1", -1), ("0", 0)],
)
def test_go_integers(text: str, value: int) -> None:
    assert flags_mod.parse_go_int(text) == value


@pytest.mark.parametrize("text", ["08", "1__0", "_1", "1_", " 1", "1.5", "", "0x", "9" * 30])
def test_bad_go_integers(text: str) -> None:
    with pytest.raises(ValueError):
        flags_mod.parse_go_int(text)


def test_int_flag_value_error_is_usage_error() -> None:
    code, err = usage_exit("--healthz-port=http")
    assert code == 2 and "healthz-port" in err


def test_missing_value_is_usage_error() -> None:
    code, err = usage_exit("--etcd-prefix")
    assert code == 2 and "flag needs an argument: -etcd-prefix" in err


def test_unknown_flag_is_usage_error() -> None:
    code, err = usage_exit("--no-such-flag")
    assert code == 2
    assert "flag provided but not defined: -no-such-flag" in err


@pytest.mark.parametrize("argv", [["-etcd-endpoint", "x"], ["--ip-mas"], ["-iface-reg=x"],
                                  ["--kube-subnet"]])
def test_no_prefix_abbreviation(argv: list[str]) -> None:
    code, err = usage_exit(*argv)
    assert code == 2 and "not defined" in err


def test_unknown_flag_suggests_the_close_name() -> None:
    _, err = usage_exit("-etcd-endpoint", "x")
    assert "did you mean --etcd-endpoints?" in err


@pytest.mark.parametrize("arg", ["---x", "-=x", "--=x"])
def test_bad_flag_syntax(arg: str) -> None:
    code, err = usage_exit(arg)
    assert code == 2 and "bad flag syntax" in err


def test_positional_arguments_are_rejected() -> None:
    code, err = usage_exit("-ip-masq", "stray", "-kube-subnet-mgr")
    assert code == 2 and "'stray'" in err


def test_double_dash_ends_flags() -> None:
    assert parse("-ip-masq", "--").ip_masq is True
    code, _ = usage_exit("--", "-ip-masq")
    assert code == 2


@pytest.mark.parametrize("arg", ["-h", "--help", "-help", "--h"])
def test_help_prints_usage_and_exits_zero(arg: str) -> None:
    code, err = usage_exit(arg, "--bogus-after-help")
    assert code == 0
    assert err.startswith("Usage: flanneld")
    assert "--etcd-endpoints" in err and "--resync-interval" in err


def test_version_goes_to_stderr_and_skips_env(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FlagsExit) as exc:
        # a bad env value would be an error, but --version exits before env processing
        parse_flags(["--version"], {"FLANNELD_IP_MASQ": "bogus"})
    assert exc.value.code == 0
    out = capsys.readouterr()
    assert out.err == f"{flanneld.__version__}\n"
    assert out.out == ""


def test_version_false_does_not_exit() -> None:
    assert parse("-version=false").ip_masq is False


# --- environment ---------------------------------------------------------------------


def test_env_fills_unset_flags() -> None:
    env = {
        "FLANNELD_ETCD_ENDPOINTS": "http://env:2379",
        "FLANNELD_IP_MASQ": "true",
        "FLANNELD_KUBE_SUBNET_MGR": "1",
        "FLANNELD_HEALTHZ_PORT": "8081",
        "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "30",
        "FLANNELD_V": "2",
        "FLANNELD_LOG_BACKTRACE_AT": "x.go:1",
        "FLANNELD_RESYNC_INTERVAL": "0.5",
    }
    flags = parse(env=env)
    assert flags.etcd_endpoints == "http://env:2379"
    assert flags.ip_masq is True and flags.kube_subnet_mgr is True
    assert flags.healthz_port == 8081
    assert flags.subnet_lease_renew_margin == 30
    assert flags.v == 2
    assert flags.log_backtrace_at == "x.go:1"
    assert flags.resync_interval == 0.5


def test_command_line_wins_over_env() -> None:
    env = {"FLANNELD_ETCD_PREFIX": "/env", "FLANNELD_IP_MASQ": "true", "FLANNELD_IFACE": "envif"}
    flags = parse("-etcd-prefix=/cli", "-ip-masq=false", "-iface=cliif", env=env)
    assert flags.etcd_prefix == "/cli"
    assert flags.ip_masq is False
    assert flags.iface == ("cliif",)


def test_env_bool_can_turn_a_default_off() -> None:
    assert parse(env={"FLANNELD_IPTABLES_FORWARD_RULES": "false"}).iptables_forward_rules is False


def test_empty_env_values_are_ignored() -> None:
    flags = parse(env={"FLANNELD_ETCD_PREFIX": "", "FLANNELD_HEALTHZ_PORT": ""})
    assert flags.etcd_prefix == "/coreos.com/network" and flags.healthz_port == 0


def test_repeatable_env_gives_exactly_one_entry() -> None:
    flags = parse(env={"FLANNELD_IFACE": "eth0,eth1", "FLANNELD_IFACE_REGEX": "^en.*"})
    assert flags.iface == ("eth0,eth1",)
    assert flags.iface_regex == ("^en.*",)


def test_unrelated_env_is_ignored() -> None:
    flags = parse(env={"FLANNELD_NO_SUCH": "x", "ETCD_PREFIX": "/x", "flanneld_etcd_prefix": "/y"})
    assert flags == Flags()


def test_bad_env_value_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="FLANNELD_HEALTHZ_PORT"):
        parse(env={"FLANNELD_HEALTHZ_PORT": "eighty"})


# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize("margin", [1, 60, 1439])
def test_renew_margin_accepted(margin: int) -> None:
    assert parse(f"--subnet-lease-renew-margin={margin}").subnet_lease_renew_margin == margin


@pytest.mark.parametrize("margin", [0, -5, 1440, 100000])
def test_renew_margin_out_of_range(margin: int) -> None:
    with pytest.raises(ConfigError, match="subnet-lease-renew-margin"):
        parse(f"--subnet-lease-renew-margin={margin}")


def test_renew_margin_from_env_is_validated() -> None:
    with pytest.raises(ConfigError):
        parse(env={"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "1440"})


@pytest.mark.parametrize("argv", [["--healthz-port=65536"], ["--healthz-port=-1"],
                                  ["--iptables-resync=0"]])
def test_other_ranges(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        parse(*argv)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "soon"])
def test_bad_resync_interval(text: str) -> None:
    code, _ = usage_exit(f"--resync-interval={text}")
    assert code == 2


@pytest.mark.parametrize("text", ["0", "-1", "100.5", "nan", "lots"])
def test_bad_resync_max_cpu(text: str) -> None:
    code, _ = usage_exit(f"--resync-max-cpu={text}")
    assert code == 2


def test_resync_max_cpu_defaults_to_half_a_percent() -> None:
    assert parse().resync_max_cpu == 0.5
    assert parse("--resync-max-cpu=100").resync_max_cpu == 100.0


# --- secrets ---------------------------------------------------------------------------


def test_password_never_in_repr_or_str() -> None:
    flags = parse("--etcd-password=hunter2-secret", "--etcd-username=alice")
    assert flags.etcd_password == "hunter2-secret"
    assert "hunter2-secret" not in repr(flags)
    assert "hunter2-secret" not in str(flags)
    assert "alice" in repr(flags)


def test_password_from_env_not_in_repr() -> None:
    flags = parse(env={"FLANNELD_ETCD_PASSWORD": "s3cr3t-pw"})
    assert flags.etcd_password == "s3cr3t-pw" and "s3cr3t-pw" not in repr(flags)


# --- main() ---------------------------------------------------------------------------


@pytest.fixture
def fake_daemon(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[Flags], int]], list[Flags]]:
    def install(run: Callable[[Flags], int]) -> list[Flags]:
        seen: list[Flags] = []

        def recording_run(flags: Flags, start_done: Callable[[], None] = lambda: None) -> int:
            seen.append(flags)
            return run(flags)

        module = types.ModuleType("flanneld.daemon")
        module.run = recording_run  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "flanneld.daemon", module)
        return seen

    return install


def test_main_runs_daemon_with_parsed_flags(
    fake_daemon: Callable[[Callable[[Flags], int]], list[Flags]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLANNELD_ETCD_PREFIX", "/from-env")
    seen = fake_daemon(lambda flags: 0)
    assert cli.main(["-ip-masq"]) == 0
    assert len(seen) == 1
    assert seen[0].ip_masq is True and seen[0].etcd_prefix == "/from-env"


def test_main_returns_daemon_code(fake_daemon: Callable[[Callable[[Flags], int]], list[Flags]]) -> None:
    fake_daemon(lambda flags: 3)
    assert cli.main([]) == 3


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ConfigError("bad net-conf"), "configuration error"),
        (InterfaceError("no eth9"), "no usable external interface"),
        (SubnetsExhaustedError("out of subnets"), "subnet lease failed"),
        (LeaseError("lost"), "subnet lease failed"),
        (StoreError("etcd down"), "subnet store failed"),
        (FlannelError("other"), "fatal error"),
    ],
)
def test_main_maps_flannel_errors_to_one_error_line(
    fake_daemon: Callable[[Callable[[Flags], int]], list[Flags]],
    capsys: pytest.CaptureFixture[str],
    error: FlannelError,
    kind: str,
) -> None:
    def run(flags: Flags) -> int:
        raise error

    fake_daemon(run)
    assert cli.main([]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("E")]
    assert len(errors) == 1
    assert f"{kind}: {error}" in errors[0]


def test_main_keyboard_interrupt_is_exit_zero(
    fake_daemon: Callable[[Callable[[Flags], int]], list[Flags]],
) -> None:
    def run(flags: Flags) -> int:
        raise KeyboardInterrupt

    fake_daemon(run)
    assert cli.main([]) == 0


def test_main_usage_error_is_two_and_help_zero(
    fake_daemon: Callable[[Callable[[Flags], int]], list[Flags]],
) -> None:
    seen = fake_daemon(lambda flags: 0)
    assert cli.main(["--bogus"]) == 2
    assert cli.main(["--help"]) == 0
    assert cli.main(["--version"]) == 0
    assert seen == []


def test_main_invalid_margin_exits_one(
    fake_daemon: Callable[[Callable[[Flags], int]], list[Flags]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen = fake_daemon(lambda flags: 0)
    assert cli.main(["--subnet-lease-renew-margin=0"]) == 1
    assert seen == []
    assert "subnet-lease-renew-margin" in capsys.readouterr().err


def test_main_logs_klog_style_and_never_the_password(
    fake_daemon: Callable[[Callable[[Flags], int]], list[Flags]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    def run(flags: Flags) -> int:
        logging.getLogger("flanneld.daemon").debug("debug line visible")
        logging.getLogger("flanneld.daemon").info("info line")
        return 0

    fake_daemon(run)
    assert cli.main(["--etcd-password=topsecret-pw", "-v=1"]) == 0
    err = capsys.readouterr().err
    assert "topsecret-pw" not in err
    info = next(line for line in err.splitlines() if line.endswith("info line"))
    # I<mmdd> <hh:mm:ss.micro> <pid> <logger>:<line>] message
    assert info[0] == "I" and info[5] == " " and info[14] == "."
    assert "flanneld.daemon:" in info
    assert any(line.startswith("D") and "debug line visible" in line for line in err.splitlines())


def test_main_without_v_hides_debug_and_removes_its_handler(
    fake_daemon: Callable[[Callable[[Flags], int]], list[Flags]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    def run(flags: Flags) -> int:
        logging.getLogger("flanneld.daemon").debug("hidden debug")
        return 0

    fake_daemon(run)
    handlers_before = list(logging.getLogger().handlers)
    assert cli.main([]) == 0
    assert "hidden debug" not in capsys.readouterr().err
    assert logging.getLogger().handlers == handlers_before


def test_network_policy_needs_kube_mode() -> None:
    with pytest.raises(ConfigError, match="--network-policy needs --kube-subnet-mgr"):
        parse("--network-policy")
    assert parse("--network-policy", "--kube-subnet-mgr").network_policy is True
    env = {"FLANNELD_NETWORK_POLICY": "true", "FLANNELD_KUBE_SUBNET_MGR": "true"}
    assert parse(env=env).network_policy is True
    assert parse().network_policy is False


def test_main_pauses_collection_until_the_daemon_has_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[bool] = []

    def run(flags: Flags, start_done: Callable[[], None]) -> int:
        seen.append(gc.isenabled())
        start_done()
        seen.append(gc.isenabled())
        return 0

    module = types.ModuleType("flanneld.daemon")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flanneld.daemon", module)
    gc.enable()
    try:
        assert cli.main([]) == 0
    finally:
        gc.unfreeze()
    assert seen == [False, True]
    assert gc.isenabled()


def test_main_resumes_collection_when_the_start_fails(
    fake_daemon: Callable[[Callable[[Flags], int]], list[Flags]],
) -> None:
    def run(flags: Flags) -> int:
        assert not gc.isenabled()
        raise StoreError("etcd down")

    fake_daemon(run)
    gc.enable()
    assert cli.main([]) == 1
    assert gc.isenabled() and gc.get_freeze_count() == 0
