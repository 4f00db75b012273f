"""``flannelctl doctor``: find what breaks pod networking on a node and name the fix.

Three layers: :mod:`.gather` and :mod:`.probe` observe (files, HTTP, the
lease store, netlink, sysctls, firewall listings, active probes) into one
:class:`~flanneld.doctor.model.Observations` snapshot; the pure checks of
:mod:`.checks` and :mod:`.hostchecks` judge it; :mod:`.render` prints.
"""

from __future__ import annotations

from flanneld.doctor.checks import context, overlay_checks
from flanneld.doctor.hostchecks import host_checks
from flanneld.doctor.model import CheckResult, Observations


def judge(obs: Observations) -> list[CheckResult]:
    """Every check's result for one snapshot, in report order."""
    ctx = context(obs)
    return [*overlay_checks(obs, ctx), *host_checks(obs, ctx)]
