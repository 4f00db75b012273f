"""The multi-node lab: nodes as network namespaces around an underlay bridge."""
