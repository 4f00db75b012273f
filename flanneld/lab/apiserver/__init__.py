"""An in-repo Kubernetes API server test double (see server.py)."""

from .server import ApiError, KubeAPIDouble, Request

__all__ = ["ApiError", "KubeAPIDouble", "Request"]
