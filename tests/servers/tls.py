"""A self-signed certificate for the tests' HTTPS servers, made with the openssl CLI.

Valid for 127.0.0.1, localhost and llm.internal (the name the test proxy
resolves), and its own CA: a client verifies it only when given this very
file (``ssl=PATH``, ``--ca-bundle``, ``SSL_CERT_FILE``).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Certificate", "make_certificate"]


@dataclass(frozen=True)
class Certificate:
    """A PEM certificate (``cert``, also the CA bundle that trusts it) and its key."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_certificate(directory: Path) -> Certificate | None:
    """A fresh self-signed certificate in ``directory``; None without the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=motio-test",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:llm.internal",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return Certificate(cert, key)
