"""Our nftables table's name, and the script that deletes it.

Apart from the policy engine (``model``, ``ruleset``, ``script``: 20-50 ms of
imports) so that a kube-mode daemon without ``--network-policy``, which only
removes a table left over from a run with the flag, loads none of it; that
import ran beside the first lease events after the start and held each up.
"""

from __future__ import annotations

TABLE = "pyflannel-policy"
FAMILY = "inet"


def remove_script() -> str:
    """Deletes our table whether or not it exists."""
    return f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
