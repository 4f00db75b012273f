"""A self-signed certificate for the lab's API server double (image mode).

A pod's in-cluster configuration speaks HTTPS to ``KUBERNETES_SERVICE_HOST``
and verifies the server against the ``ca.crt`` in its service-account
directory, so in image mode the double serves TLS with a certificate made
here: one self-signed certificate (it is its own CA) whose subjectAltName is
the double's address.  Made with the ``openssl`` command, short-lived,
kept in the lab's state dir.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass

from subnet.errors import FlannelError

VALID_DAYS = 7
OPENSSL_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class ServerCert:
    cert: str  # PEM; also the CA clients trust (ca.crt)
    key: str


def openssl_argv(cert: ServerCert, address: ipaddress.IPv4Address) -> list[str]:
    return [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", cert.key, "-out", cert.cert, "-days", str(VALID_DAYS),
        "-subj", "/CN=pyflannel-lab-apiserver",
        "-addext", f"subjectAltName=IP:{address}",
    ]


def make_server_cert(directory: str, address: ipaddress.IPv4Address) -> ServerCert:
    """Write a key and a self-signed certificate for ``address`` into ``directory``."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert = ServerCert(os.path.join(directory, "apiserver.crt"),
                      os.path.join(directory, "apiserver.key"))
    try:
        done = subprocess.run(openssl_argv(cert, address), capture_output=True, text=True,
                              timeout=OPENSSL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FlannelError(f"cannot make the API double's certificate: {err}") from err
    if done.returncode != 0:
        raise FlannelError(f"openssl failed making the API double's certificate: "
                           f"{done.stderr.strip()}")
    return cert
