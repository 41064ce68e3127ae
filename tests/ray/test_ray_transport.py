"""A backend over TLS with credentials in its URL, rebuilt on Ray workers.

The workers build their copies from the backend's ``recipe()``: a CA bundle
path and the URL's credentials travel with it; an ``ssl.SSLContext`` cannot
(it does not pickle), and the run says so before anything starts.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections import Counter
from pathlib import Path

import pytest

from motio import ConfigurationError, batch
from motio.backends import OpenAIBackend
from tests.servers.scripted import running
from tests.servers.tls import Certificate

PASSWORD = "ray-pa55word"


def prompts(count: int) -> list[dict[str, object]]:
    return [{"id": f"p{i}", "prompt": f"Say the number {i}."} for i in range(count)]


def test_workers_rebuild_a_tls_backend_with_url_credentials(
    tmp_path: Path, ray_address: str, certificate: Certificate
) -> None:
    out = tmp_path / "out.jsonl"
    with running(tls=certificate.server_context(), basic_auth=("bob", PASSWORD)) as server:
        url = server.base_url.replace("://", f"://bob:{PASSWORD}@")
        backend = OpenAIBackend(base_url=url, ssl=str(certificate.cert), max_concurrency=4)
        results = list(batch.run(prompts(40), backend=backend, ray=ray_address, workers=2, output=out))
        backend.close()
        seen = {r.headers["authorization"] for r in server.chat_requests}
    assert Counter(r["id"] for r in results) == Counter(f"p{i}" for i in range(40))
    assert all(r["error"] is None and r["output"] == f"echo: Say the number {r['id'][1:]}." for r in results)
    assert seen == {"Basic " + base64.b64encode(f"bob:{PASSWORD}".encode()).decode()}
    assert PASSWORD not in out.read_text() and PASSWORD not in json.dumps(results)


def test_an_ssl_context_cannot_go_to_workers_and_says_what_to_do(
    ray_address: str, certificate: Certificate
) -> None:
    context = ssl.create_default_context(cafile=str(certificate.cert))
    backend = OpenAIBackend("m", base_url="https://127.0.0.1:9/v1", ssl=context)
    with pytest.raises(ConfigurationError, match="does not pickle.*path of the CA bundle"):
        list(batch.run(prompts(3), backend=backend, ray=ray_address, workers=1))
    backend.close()
