"""Masquerade and forward rules: pure renderers (rules) and thin appliers (ipt, nft)."""
