"""The etcd manager's acquisition decision, without etcd: reuse, previous, free, exhausted."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from subnet.allocator import candidates
from subnet.etcd_state import (
    ClaimFree,
    ClaimPrevious,
    Exhausted,
    ListedLease,
    Repair,
    Reuse,
    decide,
    held_by,
)
from subnet.lease import LeaseAttrs
from subnet.netconf import SubnetRange, parse_net_config, subnet_ranges

ME = IPv4Address("192.168.1.1")
NOTHING_BEFORE: tuple[IPv4Network | None, IPv6Network | None] = (None, None)


def ranges(conf: str) -> tuple[SubnetRange, SubnetRange | None]:
    v4, v6 = subnet_ranges(parse_net_config(conf))
    assert v4 is not None
    return v4, v6


V4_ONLY = ranges('{"Network": "10.5.0.0/16"}')  # SubnetMin 10.5.1.0, /24
TINY = ranges('{"Network": "10.6.0.0/28"}')  # three /30s: .4 .8 .12
DUAL = ranges('{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:5::/48"}')


def listed(key: str, ip: str | None, *, revision: int = 7) -> ListedLease:
    v4_text, _, v6_text = key.partition("&")
    v4 = IPv4Network(v4_text.replace("-", "/"))
    v6 = IPv6Network(v6_text.replace("-", "/")) if v6_text else None
    attrs = None if ip is None else LeaseAttrs(public_ip=IPv4Address(ip), backend_type="vxlan")
    return ListedLease(key.encode(), v4, v6, attrs, etcd_lease=0x42, mod_revision=revision,
                       create_revision=revision)


def seeded() -> random.Random:
    return random.Random(8)


def test_the_lease_of_our_public_ip_is_reused_when_it_fits() -> None:
    mine = listed("10.5.9.0-24", str(ME))
    others = [listed("10.5.3.0-24", "192.168.1.2"), mine]
    previous = (IPv4Network("10.5.77.0/24"), None)
    assert decide(others, ME, previous, V4_ONLY, seeded()) == Reuse(mine)


def test_unspecified_public_ip_never_reuses() -> None:
    nobody = listed("10.5.9.0-24", "0.0.0.0")
    assert held_by([nobody], IPv4Address("0.0.0.0")) is None
    decision = decide([nobody], IPv4Address("0.0.0.0"), NOTHING_BEFORE, V4_ONLY, seeded())
    assert isinstance(decision, ClaimFree) and decision.subnet != nobody.v4


def test_our_lease_outside_the_config_is_deleted_and_a_free_one_chosen() -> None:
    mine = listed("10.6.0.4-30", str(ME))  # the config moved from 10.6.0.0/28 to 10.7.0.0/28
    others = [listed("10.7.0.4-30", "192.168.3.1"), listed("10.7.0.8-30", "192.168.3.2"), mine]
    moved = ranges('{"Network": "10.7.0.0/28"}')
    decision = decide(others, ME, (mine.v4, None), moved, seeded())
    assert decision == ClaimFree(IPv4Network("10.7.0.12/30"), None, stale=mine,
                                 passed_over=mine.v4)


def test_our_stale_lease_no_longer_blocks_its_subnet() -> None:
    mine = listed("10.6.0.4-30&fd00:6::-64", str(ME))  # dual-stack, the config no longer is
    others = [listed("10.6.0.8-30", "192.168.3.2"), listed("10.6.0.12-30", "192.168.3.3"), mine]
    decision = decide(others, ME, NOTHING_BEFORE, TINY, seeded())
    assert decision == ClaimFree(IPv4Network("10.6.0.4/30"), None, stale=mine, passed_over=None)


def test_an_ipv4_only_lease_does_not_fit_a_dual_stack_config() -> None:
    mine = listed("10.5.9.0-24", str(ME))
    decision = decide([mine], ME, (mine.v4, None), DUAL, seeded())
    assert isinstance(decision, ClaimFree)
    assert decision.stale == mine and decision.ipv6_subnet is not None
    assert decision.passed_over == mine.v4  # no IPv6 half: the previous pair does not fit


def test_dual_stack_lease_is_reused_in_a_dual_stack_config() -> None:
    mine = listed("10.5.9.0-24&fd00:5:0:9::-64", str(ME))
    assert decide([mine], ME, NOTHING_BEFORE, DUAL, seeded()) == Reuse(mine)


def test_previous_subnet_is_claimed_when_free_and_in_range() -> None:
    others = [listed("10.5.3.0-24", "192.168.1.2")]
    previous = (IPv4Network("10.5.77.0/24"), None)
    decision = decide(others, ME, previous, V4_ONLY, seeded())
    assert decision == ClaimPrevious(IPv4Network("10.5.77.0/24"), None, stale=None)


def test_previous_subnet_taken_or_out_of_range_is_passed_over_for_a_free_one() -> None:
    taken = [listed("10.5.77.0-24", "192.168.9.9")]
    for previous in ("10.5.77.0/24", "10.6.3.0/24", "10.5.0.0/24", "10.5.78.0/25"):
        decision = decide(taken, ME, (IPv4Network(previous), None), V4_ONLY, seeded())
        assert isinstance(decision, ClaimFree), previous
        assert decision.passed_over == IPv4Network(previous)
        assert decision.subnet not in (IPv4Network("10.5.77.0/24"), IPv4Network(previous))
        assert decision.subnet.prefixlen == 24
        assert decision.subnet.subnet_of(IPv4Network("10.5.0.0/16"))


def test_a_value_that_does_not_parse_still_blocks_its_subnet() -> None:
    unreadable = listed("10.6.0.4-30", None)
    other = listed("10.6.0.8-30", "192.168.3.2")
    decision = decide([unreadable, other], ME, NOTHING_BEFORE, TINY, seeded())
    assert decision == ClaimFree(IPv4Network("10.6.0.12/30"), None, stale=None,
                                 passed_over=None)


def test_our_previous_lease_overwritten_with_garbage_is_repaired() -> None:
    unreadable = listed("10.6.0.4-30", None)
    other = listed("10.6.0.8-30", "192.168.3.2")
    decision = decide([unreadable, other], ME, (unreadable.v4, None), TINY, seeded())
    assert decision == Repair(unreadable, stale=None)


def test_the_free_choice_is_random_among_free_subnets_and_repeatable_with_a_seed() -> None:
    taken = [listed(f"10.5.{i}.0-24", f"192.168.2.{i}") for i in range(1, 50)]
    picks = set()
    for seed in range(20):
        decision = decide(taken, ME, NOTHING_BEFORE, V4_ONLY, random.Random(seed))
        assert isinstance(decision, ClaimFree)
        assert all(not decision.subnet.overlaps(t.v4) for t in taken)
        assert decision == decide(taken, ME, NOTHING_BEFORE, V4_ONLY, random.Random(seed))
        picks.add(decision.subnet)
    assert len(picks) > 1


def test_every_subnet_leased_is_exhausted_with_the_fix_named() -> None:
    full = [listed(f"10.6.0.{n}-30", f"192.168.3.{n}") for n in (4, 8, 12)]
    decision = decide(full, ME, NOTHING_BEFORE, TINY, seeded())
    assert isinstance(decision, Exhausted) and decision.stale is None
    assert "out of subnets" in decision.reason and "delete leases of dead nodes" in decision.reason


def test_ipv6_exhaustion_is_exhaustion_too() -> None:
    v4, _ = V4_ONLY
    v6 = ranges('{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": '
                '"fd00:5::/64", "IPv6SubnetLen": 66}')[1]
    assert v6 is not None
    every_v6 = list(candidates(v6))
    assert len(every_v6) == 3
    leased = [listed(f"10.5.{i + 1}.0-24&{net.network_address}-66", f"192.168.3.{i + 1}")
              for i, net in enumerate(every_v6)]
    decision = decide(leased, ME, NOTHING_BEFORE, (v4, v6), seeded())
    assert isinstance(decision, Exhausted)
    assert "out of subnets: every /66" in decision.reason
