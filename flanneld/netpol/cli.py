"""``flannelctl netpol explain NAMESPACE/POD``: which policies select a pod, from the API."""

from __future__ import annotations

import argparse
from typing import Any

from flanneld.netpol.controller import PolicyStore
from flanneld.netpol.explain import explain
from subnet.kube_state import WATCHED_KINDS, KubeSettings, ObjectEvent


def _explain(args: argparse.Namespace) -> int:
    from subnet.kube import ObjectWatch, build_api_client

    api: Any = build_api_client(KubeSettings(api_url=args.api_url,
                                             kubeconfig_file=args.kubeconfig))
    try:
        store = PolicyStore()
        for kind in WATCHED_KINDS:
            _, items = ObjectWatch(api, kind).list_once()
            store.handle(ObjectEvent(kind, "SNAPSHOT", items))
    finally:
        api.close()
    print(explain(store.cluster(), args.pod))
    return 0


def add_netpol_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    netpol = subparsers.add_parser("netpol", help="NetworkPolicy tools (--network-policy)")
    cmds = netpol.add_subparsers(dest="netpol_command", required=True, metavar="COMMAND")
    ex = cmds.add_parser("explain", help="which NetworkPolicies select a pod, per direction")
    ex.add_argument("pod", metavar="NAMESPACE/POD")
    ex.add_argument("--kubeconfig", default="", help="kubeconfig file (default: in-cluster, "
                    "then ~/.kube/config)")
    ex.add_argument("--api-url", default="", help="API server URL (overrides the kubeconfig's)")
    ex.set_defaults(func=_explain)
