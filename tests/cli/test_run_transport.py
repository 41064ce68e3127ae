"""``motio run`` (and ``motio chat``) through a proxy, over TLS, with
credentials in the server URL, and against a server that ignores ``stream``.

Real subprocesses of the command against real loopback servers: the
scripted server (over TLS where it matters) and a forward proxy that alone
resolves the made-up host ``llm.internal``, so a run that succeeds there
proves it went through the proxy.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.proxy import running_proxy
from tests.servers.scripted import ScriptedServer, error_event, ignore_stream, running, status
from tests.servers.tls import Certificate

from .conftest import assert_clean, complete_lines, ids_of, motio_env, run_motio, write_prompts

COUNT = 12
PASSWORD = "pa55-w0rd-xyzzy"


def proxy_free_env(**extra: str) -> dict[str, str]:
    """The child's environment without any proxy variable but ``extra``."""
    names = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in motio_env().items() if k.lower() not in names}
    env.update(extra)
    return env


def assert_every_answer(out: Path, count: int = COUNT) -> None:
    """Every id once, each with its exact answer."""
    lines = complete_lines(out)
    assert sorted(ids_of(lines)) == sorted(f"p{i}" for i in range(count))
    for line in lines:
        assert line["error"] is None and line["output"] == f"echo: Say the number {line['id'][1:]}."


def assert_password_absent(done: subprocess.CompletedProcess[str], *files: Path) -> None:
    texts = [done.stdout, done.stderr] + [f.read_text() for f in files if f.exists()]
    for text in texts:
        assert PASSWORD not in text


# -- proxies ---------------------------------------------------------------------------


def test_run_through_http_proxy_reaches_a_host_only_the_proxy_resolves(
    tmp_path: Path, server: ScriptedServer
) -> None:
    prompts, out = write_prompts(tmp_path / "prompts.jsonl", COUNT), tmp_path / "out.jsonl"
    with running_proxy({"llm.internal": ("127.0.0.1", server.port)}) as proxy:
        env = proxy_free_env(HTTP_PROXY=proxy.url)
        done = run_motio("run", prompts, "-o", out, "--base-url", "http://llm.internal:8000/v1", env=env)
        seen = proxy.requests
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    assert_every_answer(out)
    chat = [r for r in seen if r.target == "http://llm.internal:8000/v1/chat/completions"]
    assert len(chat) == COUNT == len(server.chat_requests)
    assert ("GET", "http://llm.internal:8000/v1/models") in [(r.method, r.target) for r in seen]


def test_no_proxy_hosts_are_reached_directly_by_the_run(tmp_path: Path, server: ScriptedServer) -> None:
    prompts, out = write_prompts(tmp_path / "prompts.jsonl", COUNT), tmp_path / "out.jsonl"
    with running_proxy({"127.0.0.1": ("127.0.0.1", server.port)}) as proxy:
        env = proxy_free_env(HTTP_PROXY=proxy.url, NO_PROXY="localhost,127.0.0.1")
        done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url, env=env)
        assert proxy.requests == []
    assert done.returncode == 0, done.stderr
    assert_every_answer(out)


# -- credentials in the URL --------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def with_credentials(url: str, password: str = PASSWORD) -> str:
    return url.replace("://", f"://bob:{password}@")


@pytest.mark.parametrize("output", ["file", "stdout"])
def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(tmp_path: Path, output: str) -> None:
    prompts, out = write_prompts(tmp_path / "prompts.jsonl", COUNT), tmp_path / "out.jsonl"
    with running(basic_auth=("bob", PASSWORD)) as server:
        url = with_credentials(server.base_url)
        target = "-" if output == "stdout" else str(out)
        done = run_motio("run", prompts, "-o", target, "--base-url", url, env=proxy_free_env())
        seen = server.requests
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    if output == "stdout":
        out.write_text(done.stdout)
    assert_every_answer(out)
    assert {r.headers["authorization"] for r in seen} == {basic("bob", PASSWORD)}
    assert_password_absent(done, out)


@pytest.mark.parametrize("case", ["server-down", "wrong-password", "api-key-too"])
def test_a_failing_run_never_shows_the_password(tmp_path: Path, closed_port_url: str, case: str) -> None:
    prompts, out = write_prompts(tmp_path / "prompts.jsonl", 3), tmp_path / "out.jsonl"
    with running(basic_auth=("bob", "another")) as server:
        url = with_credentials(closed_port_url if case == "server-down" else server.base_url)
        extra = ["--api-key-env", "MY_KEY"] if case == "api-key-too" else []
        env = proxy_free_env(MY_KEY="sk-mine")
        done = run_motio("run", prompts, "-o", out, "--base-url", url, *extra, env=env)
    assert done.returncode == (2 if case == "api-key-too" else 3), done.stderr
    assert_clean(done.stderr)
    assert url.replace(PASSWORD, "***") in done.stderr
    assert_password_absent(done, out)


def test_the_start_up_warning_for_a_server_down_shows_it_masked(tmp_path: Path, closed_port_url: str) -> None:
    prompts, out = write_prompts(tmp_path / "prompts.jsonl", COUNT), tmp_path / "out.jsonl"
    with running(basic_auth=("bob", PASSWORD)) as server:
        up, down = with_credentials(server.base_url), with_credentials(closed_port_url)
        servers = ["--base-url", up, "--base-url", down]
        done = run_motio("run", prompts, "-o", out, *servers, env=proxy_free_env())
    assert done.returncode == 0, done.stderr
    assert f"warning: {down.replace(PASSWORD, '***')} does not answer" in done.stderr
    assert_every_answer(out)
    assert_password_absent(done, out)


def test_prompts_that_fail_on_the_server_never_show_the_password(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "prompts.jsonl", COUNT), tmp_path / "out.jsonl"
    with running(basic_auth=("bob", PASSWORD)) as server:
        server.rule = lambda r: status(400) if r.prompt.endswith(" 3.") else None
        url = with_credentials(server.base_url)
        done = run_motio("run", prompts, "-o", out, "--base-url", url, env=proxy_free_env())
    assert done.returncode == 1, done.stderr
    lines = {line["id"]: line for line in complete_lines(out)}
    assert sorted(lines) == sorted(f"p{i}" for i in range(COUNT))
    assert url.replace(PASSWORD, "***") in lines["p3"]["error"]["message"]
    assert_password_absent(done, out)


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture
def tls_server(certificate: Certificate) -> Iterator[ScriptedServer]:
    with running(tls=certificate.server_context()) as server:
        yield server


@pytest.mark.parametrize("how", ["--ca-bundle", "SSL_CERT_FILE"])
def test_an_https_server_trusted_by_ca_bundle_or_ssl_cert_file(
    tmp_path: Path, tls_server: ScriptedServer, certificate: Certificate, how: str
) -> None:
    prompts, out = write_prompts(tmp_path / "prompts.jsonl", COUNT), tmp_path / "out.jsonl"
    extra = ["--ca-bundle", str(certificate.cert)] if how == "--ca-bundle" else []
    env = proxy_free_env(SSL_CERT_FILE=str(certificate.cert)) if how == "SSL_CERT_FILE" else proxy_free_env()
    done = run_motio("run", prompts, "-o", out, "--base-url", tls_server.base_url, *extra, env=env)
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    assert_every_answer(out)


def test_an_untrusted_certificate_stops_the_run_saying_what_to_do(
    tmp_path: Path, tls_server: ScriptedServer
) -> None:
    prompts, out = write_prompts(tmp_path / "prompts.jsonl", 3), tmp_path / "out.jsonl"
    done = run_motio("run", prompts, "-o", out, "--base-url", tls_server.base_url, env=proxy_free_env())
    assert done.returncode == 3, done.stderr
    assert_clean(done.stderr)
    assert "certificate is not trusted" in done.stderr and "--ca-bundle" in done.stderr
    assert not out.exists() and tls_server.chat_requests == []


def test_a_ca_bundle_that_cannot_be_read_is_a_usage_error(tmp_path: Path, server: ScriptedServer) -> None:
    prompts, missing = write_prompts(tmp_path / "prompts.jsonl", 3), tmp_path / "nowhere.pem"
    done = run_motio("run", prompts, "-o", tmp_path / "out.jsonl", "--base-url", server.base_url,
                     "--ca-bundle", missing)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"--ca-bundle {missing}: cannot read it" in done.stderr and "Traceback" not in done.stderr
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("no certificate here\n")
    done = run_motio("run", prompts, "-o", tmp_path / "out.jsonl", "--base-url", server.base_url,
                     "--ca-bundle", garbage)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "garbage.pem" in done.stderr and "no PEM CA certificate" in done.stderr
    assert server.chat_requests == []


def test_chat_takes_a_ca_bundle_too(tls_server: ScriptedServer, certificate: Certificate) -> None:
    done = run_motio("chat", "hello", "--base-url", tls_server.base_url, "--ca-bundle", certificate.cert,
                     env=proxy_free_env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "echo: hello"


# -- a server that ignores stream -----------------------------------------------------------


def test_a_server_that_ignores_stream_answers_every_prompt(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "prompts.jsonl", COUNT), tmp_path / "out.jsonl"
    with running(default=ignore_stream) as server:
        done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url, env=proxy_free_env())
        assert all(r.stream for r in server.chat_requests)
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    assert_every_answer(out)
    for line in complete_lines(out):
        assert line["finish_reason"] == "stop" and line["usage"]["completion_tokens"] == 5


def test_a_batch_file_against_a_server_that_ignores_stream_keeps_its_whole_answer(tmp_path: Path) -> None:
    prompts, out = tmp_path / "batch.jsonl", tmp_path / "out.jsonl"
    requests = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                 "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}}
                for i in range(4)]  # fmt: skip
    prompts.write_text("".join(json.dumps(r) + "\n" for r in requests))
    with running(default=ignore_stream) as server:
        done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url, env=proxy_free_env())
    assert done.returncode == 0, done.stderr
    lines = {line["custom_id"]: line for line in complete_lines(out)}
    assert sorted(lines) == ["r0", "r1", "r2", "r3"]
    for custom_id, line in lines.items():
        body = line["response"]["body"]
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == f"echo: q{custom_id[1:]}"


# -- a server's error event mid-stream ----------------------------------------------------


def test_an_error_event_keeps_the_text_before_it_in_the_result_line(
    tmp_path: Path, server: ScriptedServer
) -> None:
    prompts, out = write_prompts(tmp_path / "prompts.jsonl", COUNT), tmp_path / "out.jsonl"
    failure = {"message": "engine crashed", "type": "InternalServerError", "code": 500}
    # Every attempt at p5 meets it, however often it is sent.
    server.rule = lambda r: error_event(3, failure, coalesce=True) if r.prompt.endswith(" 5.") else None
    done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url, env=proxy_free_env())
    assert done.returncode == 1, done.stderr
    assert_clean(done.stderr)
    lines = {line["id"]: line for line in complete_lines(out)}
    assert sorted(lines) == sorted(f"p{i}" for i in range(COUNT))
    failed = lines.pop("p5")
    assert failed["partial_output"] == "echo: Say the"  # the 3 chunks before the error event
    assert failed["error"]["type"] == "StreamError" and "engine crashed" in failed["error"]["message"]
    for line in lines.values():
        assert line["error"] is None and line["output"] == f"echo: Say the number {line['id'][1:]}."
