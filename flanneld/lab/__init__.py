"""The multi-node lab: nodes as network namespaces around an underlay bridge.

plan (pure layout) · state (the JSON state file) · procs (detached daemons,
stopped by PID) · etcd (EtcdSpec) · etcdgw (etcd's v3 JSON gateway) · kubeapi
(kube mode: the Kubernetes API double as a lab process, its control socket) · pods
(CNI ADD like a runtime) · matrix (pings) · leases · lab (``up``/``down``/``Lab``).
"""
