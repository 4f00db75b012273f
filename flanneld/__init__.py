"""pyflannel daemon: flags, net-conf.json, subnet.env, wiring and the lab."""

__version__ = "0.1.0"
