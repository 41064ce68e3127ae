"""A backend over TLS with credentials in its URL, rebuilt on Ray workers.

From Python, the workers build their copies from the backend's ``recipe()``:
a CA bundle path and the URL's credentials travel with it; an
``ssl.SSLContext`` cannot (it does not pickle), and the run says so before
anything starts. ``motio run --ray`` sends the workers ``--ca-bundle`` as an
absolute path.
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
from tests.cli.conftest import assert_clean, complete_lines, run_motio, write_prompts
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


def test_motio_run_on_ray_with_a_ca_bundle_and_url_credentials(
    tmp_path: Path, ray_address: str, certificate: Certificate
) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 60), tmp_path / "out.jsonl"
    with running(tls=certificate.server_context(), basic_auth=("bob", PASSWORD)) as server:
        url = server.base_url.replace("://", f"://bob:{PASSWORD}@")
        done = run_motio("run", prompts, "-o", out, "--base-url", url, "--ca-bundle", certificate.cert,
                         f"--ray={ray_address}", "--workers", "2")  # fmt: skip
        seen = {r.headers["authorization"] for r in server.chat_requests}
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    lines = complete_lines(out)
    assert Counter(line["id"] for line in lines) == Counter(f"p{i}" for i in range(60))
    assert all(line["error"] is None and line["output"] == f"echo: Say the number {line['id'][1:]}."
               for line in lines)  # fmt: skip
    assert seen == {"Basic " + base64.b64encode(f"bob:{PASSWORD}".encode()).decode()}
    for text in (done.stdout, done.stderr, out.read_text()):
        assert PASSWORD not in text
