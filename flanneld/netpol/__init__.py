"""Kubernetes NetworkPolicy enforcement: model, oracle and nftables desired state."""
