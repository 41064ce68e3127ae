"""OpenAIBackend's transport as the ecosystem expects it: proxies from the
environment, TLS verification, credentials in a URL, a whole JSON answer
where a stream was asked, a server's error event mid-stream, and what a
broken connection is blamed on.

Everything runs against real loopback servers: the scripted server (over
TLS where it matters) and a real forward proxy (``tests/servers/proxy.py``)
that alone resolves the made-up host ``llm.internal``.
"""

from __future__ import annotations

import base64
import logging
import pickle
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from motio import (
    AuthenticationError,
    BackendConnectionError,
    ConfigurationError,
    ModelOutputThunk,
    ServerError,
    StreamError,
)
from motio.backends import OpenAIBackend
from tests.asyncutil import run
from tests.servers.proxy import running_proxy
from tests.servers.scripted import ScriptedServer, drop_after, error_event, ignore_stream, running, status
from tests.servers.tls import Certificate

PROMPT = "a b c d e f g h"
ANSWER = ["echo:", " a", " b", " c", " d", " e", " f", " g", " h"]
PASSWORD = "s3cret:pw@x"  # ':' and '@' percent-encoded in the URL
URL_PASSWORD = "s3cret%3Apw%40x"
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The proxy variables cleared (both cases), for the test to set."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    yield monkeypatch


async def outcome(backend: OpenAIBackend, prompt: str = PROMPT, **options: Any) -> ModelOutputThunk[Any]:
    async with backend:
        mot = await backend.generate(prompt, **options)
        try:
            await mot.avalue()
        except Exception:
            pass
        return mot


async def texts(backend: OpenAIBackend, prompts: list[str]) -> list[str]:
    async with backend:
        return [await (await backend.generate(p)).avalue() for p in prompts]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- proxies -------------------------------------------------------------------------


def test_http_proxy_reaches_a_host_only_the_proxy_resolves(
    server: ScriptedServer, proxy_env: pytest.MonkeyPatch
) -> None:
    with running_proxy({"llm.internal": ("127.0.0.1", server.port)}) as proxy:
        proxy_env.setenv("HTTP_PROXY", proxy.url)
        backend = OpenAIBackend("m", base_url="http://llm.internal:8000/v1", api_key="sk-k")
        assert run(texts(backend, ["one", "two", "three"])) == ["echo: one", "echo: two", "echo: three"]
        targets = [r.target for r in proxy.requests]
        seen = proxy.requests
    assert targets == ["http://llm.internal:8000/v1/chat/completions"] * 3
    assert [r.prompt for r in server.chat_requests] == ["one", "two", "three"]
    assert {r.headers["authorization"] for r in server.chat_requests} == {"Bearer sk-k"}
    # The server's key is the server's: never offered to the proxy as its credentials.
    assert not any("proxy-authorization" in r.headers for r in seen)


@pytest.mark.parametrize(
    ("no_proxy", "host"),
    [("127.0.0.1", "127.0.0.1"), ("localhost,127.0.0.1", "127.0.0.1"), ("*", "127.0.0.1"),
     ("localhost", "localhost"), (".internal,localhost", "localhost")],
)  # fmt: skip
def test_no_proxy_hosts_are_reached_directly(
    server: ScriptedServer, proxy_env: pytest.MonkeyPatch, no_proxy: str, host: str
) -> None:
    with running_proxy({"127.0.0.1": ("127.0.0.1", server.port)}) as proxy:
        proxy_env.setenv("HTTP_PROXY", proxy.url)
        proxy_env.setenv("NO_PROXY", no_proxy)
        backend = OpenAIBackend("m", base_url=f"http://{host}:{server.port}/v1")
        assert run(texts(backend, ["direct"])) == ["echo: direct"]
        assert proxy.requests == []
    assert len(server.chat_requests) == 1


def test_without_no_proxy_a_loopback_server_goes_through_the_proxy(
    server: ScriptedServer, proxy_env: pytest.MonkeyPatch
) -> None:
    # As curl, requests and httpx do: loopback is not special unless listed.
    with running_proxy({"127.0.0.1": ("127.0.0.1", server.port)}) as proxy:
        proxy_env.setenv("http_proxy", proxy.url)  # the lower-case spelling counts too
        assert run(texts(OpenAIBackend("m", base_url=server.base_url), ["via"])) == ["echo: via"]
        assert [r.method for r in proxy.requests] == ["POST"]


def test_no_proxy_leaves_a_proxy_only_name_unreachable(
    server: ScriptedServer, proxy_env: pytest.MonkeyPatch
) -> None:
    with running_proxy({"llm.internal": ("127.0.0.1", server.port)}) as proxy:
        proxy_env.setenv("HTTP_PROXY", proxy.url)
        proxy_env.setenv("NO_PROXY", "llm.internal")
        mot = run(outcome(OpenAIBackend("m", base_url="http://llm.internal:8000/v1", max_retries=0)))
        assert isinstance(mot.error, BackendConnectionError) and "cannot connect" in str(mot.error)
        assert proxy.requests == []


def test_proxy_credentials_go_to_the_proxy_only(
    server: ScriptedServer, proxy_env: pytest.MonkeyPatch
) -> None:
    with running_proxy({"llm.internal": ("127.0.0.1", server.port)}) as proxy:
        proxy_env.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://pu:pp@"))
        assert run(texts(OpenAIBackend("m", base_url="http://llm.internal/v1"), ["x"])) == ["echo: x"]
        [seen] = proxy.requests
    assert seen.headers["proxy-authorization"] == basic("pu", "pp")
    assert "proxy-authorization" not in server.chat_requests[0].headers


def test_https_goes_through_the_proxy_in_a_connect_tunnel(
    certificate: Certificate, proxy_env: pytest.MonkeyPatch
) -> None:
    with (
        running(tls=certificate.server_context()) as server,
        running_proxy({"llm.internal": ("127.0.0.1", server.port)}) as proxy,
    ):
        proxy_env.setenv("HTTPS_PROXY", proxy.url)
        backend = OpenAIBackend("m", base_url="https://llm.internal/v1", ssl=str(certificate.cert))
        assert run(texts(backend, ["secure", "again"])) == ["echo: secure", "echo: again"]
        assert {(r.method, r.target) for r in proxy.requests} == {("CONNECT", "llm.internal:443")}
        # Inside the tunnel only: the proxy never sees the server's key or headers.
        for record in proxy.requests:
            assert not {"authorization", "proxy-authorization"} & set(record.headers)
            assert record.headers.get("user-agent") != "motio"  # aiohttp's own, not the server's headers
    assert server.chat_requests[0].headers["authorization"] == "Bearer sk-no-key-required"


# -- TLS -----------------------------------------------------------------------------


@pytest.fixture
def tls_server(certificate: Certificate) -> Iterator[ScriptedServer]:
    with running(tls=certificate.server_context()) as server:
        yield server


def test_an_untrusted_certificate_fails_at_once_saying_what_to_do(tls_server: ScriptedServer) -> None:
    mot = run(outcome(OpenAIBackend("m", base_url=tls_server.base_url)))
    error = mot.error
    assert isinstance(error, BackendConnectionError)
    assert "certificate is not trusted" in str(error) and "--ca-bundle" in str(error)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error) or "certificate verify failed" in str(error)
    assert mot.generation.attempts is not None and mot.generation.attempts.count == 1  # not retried
    assert tls_server.chat_requests == []


def test_https_to_a_plain_http_server_fails_at_once_saying_so() -> None:
    # What uvicorn, vLLM's server, does with a TLS hello: a plain-text 400.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)

        def answer_in_plain_text() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(30)
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

        thread = threading.Thread(target=answer_in_plain_text, daemon=True)
        thread.start()
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/v1"
        mot = run(outcome(OpenAIBackend("m", base_url=url)))
        thread.join(30)
    assert isinstance(mot.error, BackendConnectionError) and "TLS handshake failed" in str(mot.error)
    assert "http://" in str(mot.error)
    assert mot.generation.attempts is not None and mot.generation.attempts.count == 1


@pytest.mark.parametrize("how", ["path", "pathlike", "context", "no-verification", "SSL_CERT_FILE"])
def test_ways_to_trust_a_server_certificate(
    tls_server: ScriptedServer, certificate: Certificate, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    ways: dict[str, dict[str, Any]] = {
        "path": {"ssl": str(certificate.cert)},
        "pathlike": {"ssl": certificate.cert},
        "context": {"ssl": ssl.create_default_context(cafile=str(certificate.cert))},
        "no-verification": {"ssl": False},
        "SSL_CERT_FILE": {},
    }
    options = ways[how]
    if how == "SSL_CERT_FILE":
        # Set after import and before the first request: still counts.
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert))
    backend = OpenAIBackend("m", base_url=tls_server.base_url, **options)
    assert run(texts(backend, ["over tls"])) == ["echo: over tls"]


def test_unusable_ssl_options_are_configuration_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigurationError, match="missing.pem.*cannot read"):
        OpenAIBackend("m", base_url="https://h/v1", ssl=str(missing))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError, match="not.pem.*no PEM CA certificate"):
        OpenAIBackend("m", base_url="https://h/v1", ssl=not_pem)
    with pytest.raises(ConfigurationError, match="ssl= takes"):
        OpenAIBackend("m", base_url="https://h/v1", ssl=42)  # type: ignore[arg-type]


def test_an_unreadable_ssl_cert_file_is_a_configuration_error(
    tls_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "gone.pem"))
    mot = run(outcome(OpenAIBackend("m", base_url=tls_server.base_url)))
    assert isinstance(mot.error, ConfigurationError)
    assert f"SSL_CERT_FILE={tmp_path / 'gone.pem'}" in str(mot.error)


def test_the_recipe_carries_a_bundle_path_and_refuses_a_context(
    tls_server: ScriptedServer, certificate: Certificate
) -> None:
    with_path = OpenAIBackend("m", base_url=tls_server.base_url, ssl=str(certificate.cert))
    rebuilt = pickle.loads(pickle.dumps(with_path.recipe()))()
    assert run(texts(rebuilt, ["copy"])) == ["echo: copy"]
    with_path.close()
    context = ssl.create_default_context(cafile=str(certificate.cert))
    with_context = OpenAIBackend("m", base_url=tls_server.base_url, ssl=context)
    with pytest.raises(ConfigurationError, match="does not pickle.*path of the CA bundle"):
        with_context.recipe()
    with_context.close()


# -- credentials in the URL ------------------------------------------------------------


def with_credentials(url: str, password: str = URL_PASSWORD) -> str:
    return url.replace("://", f"://bob:{password}@")


def test_credentials_in_the_url_are_sent_as_basic_auth_and_shown_masked() -> None:
    with running(basic_auth=("bob", PASSWORD)) as server:
        backend = OpenAIBackend("scripted-model", base_url=with_credentials(server.base_url))
        shown = server.base_url.replace("://", "://bob:***@")
        assert backend.base_url == shown and backend.base_urls == (shown,)

        async def main() -> ModelOutputThunk[Any]:
            async with backend:
                await backend.check()
                mot = await backend.generate("hi")
                await mot.avalue()
                return mot

        mot = run(main())
        assert mot.value == "echo: hi" and mot.generation.base_url == shown
        assert [s.base_url for s in backend.endpoint_snapshot()] == [shown]
        assert PASSWORD not in repr(backend) and URL_PASSWORD not in repr(backend)
        assert {r.headers["authorization"] for r in server.requests} == {basic("bob", PASSWORD)}
        assert [r.path for r in server.requests] == ["/v1/models", "/v1/chat/completions"]


def test_an_environment_api_key_is_not_sent_to_a_server_with_url_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    with running(basic_auth=("bob", PASSWORD)) as server:
        backend = OpenAIBackend("m", base_url=with_credentials(server.base_url))
        assert run(texts(backend, ["hi"])) == ["echo: hi"]
        # Rebuilt elsewhere (Ray), it must not turn the key into a conflict.
        assert run(texts(backend.recipe()(), ["again"])) == ["echo: again"]
        assert {r.headers["authorization"] for r in server.requests} == {basic("bob", PASSWORD)}


def test_several_servers_each_get_their_own_auth() -> None:
    with running(basic_auth=("bob", PASSWORD)) as locked, running(api_key="sk-open") as keyed:
        backend = OpenAIBackend(
            "scripted-model", base_url=[with_credentials(locked.base_url), keyed.base_url], api_key="sk-open"
        )
        report = run(backend.check_each(timeout=10))
        backend.close()
    assert [error for _, error in report] == [None, None]
    assert [url for url, _ in report] == [locked.base_url.replace("://", "://bob:***@"), keyed.base_url]
    assert locked.requests[0].headers["authorization"] == basic("bob", PASSWORD)
    assert keyed.requests[0].headers["authorization"] == "Bearer sk-open"


def test_auth_that_would_never_be_sent_is_refused() -> None:
    url = with_credentials("http://127.0.0.1:9/v1")
    with pytest.raises(ConfigurationError, match="api_key= was given too") as caught:
        OpenAIBackend("m", base_url=url, api_key="sk-explicit")
    assert "drop api_key=" in str(caught.value) and URL_PASSWORD not in str(caught.value)
    with pytest.raises(ConfigurationError, match="Authorization header too") as caught:
        OpenAIBackend("m", base_url=url, headers={"authorization": "Bearer x"})
    assert URL_PASSWORD not in str(caught.value)


@pytest.mark.parametrize("case", ["server-down", "wrong-password", "dropped-stream"])
def test_the_password_never_shows_in_errors_or_logs(
    case: str, closed_port_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="motio")
    with running(basic_auth=("bob", "other")) as server:
        if case == "dropped-stream":
            server.basic_auth = ("bob", PASSWORD)
            server.script(drop_after(2))
        url = closed_port_url if case == "server-down" else server.base_url
        backend = OpenAIBackend("m", base_url=with_credentials(url), max_retries=1)
        mot = run(outcome(backend))
    error = mot.error
    expected = {"server-down": BackendConnectionError, "wrong-password": AuthenticationError,
                "dropped-stream": StreamError}[case]  # fmt: skip
    assert isinstance(error, expected)
    assert url.replace("://", "://bob:***@") in str(error)
    shown = [str(error), repr(error), str(error.base_url), caplog.text, *mot.generation.attempts.errors]
    for text in shown:
        assert PASSWORD not in text and URL_PASSWORD not in text


@pytest.mark.parametrize(
    ("given", "shown"),
    [("http://bob:pw@h:8000/v1", "http://bob:***@h:8000/v1"),
     ("http://sk-token@h/v1", "http://***@h/v1"),  # a lone user is often a token
     ("http://bob:p@ss@h/v1", "http://bob:***@h/v1"),
     ("http://h/v1?next=a@b", "http://h/v1?next=a@b")],
)  # fmt: skip
def test_what_a_url_with_user_info_shows(given: str, shown: str) -> None:
    backend = OpenAIBackend("m", base_url=given)
    assert backend.base_url == shown and backend.base_urls == (shown,)
    backend.close()


def test_a_url_with_user_info_that_does_not_parse_is_refused_masked() -> None:
    with pytest.raises(ConfigurationError, match=r"bob:\*\*\*@") as caught:
        OpenAIBackend("m", base_url=f"http://bob:{URL_PASSWORD}@[::1/v1")
    assert URL_PASSWORD not in str(caught.value)


# -- a whole JSON answer where a stream was asked ---------------------------------------


@pytest.mark.parametrize("keep_response", [False, True], ids=["text", "keep-response"])
def test_a_whole_json_answer_where_a_stream_was_asked_is_the_answer(
    server: ScriptedServer, keep_response: bool
) -> None:
    server.script(ignore_stream(), ignore_stream())
    mot = run(outcome(OpenAIBackend("m", base_url=server.base_url), keep_response=keep_response))
    assert mot.error is None and mot.value == "echo: a b c d e f g h"
    meta = mot.generation
    assert meta.finish_reasons == ["stop"] and meta.streaming
    assert meta.usage == {"prompt_tokens": 8, "completion_tokens": 9, "total_tokens": 17}
    assert server.chat_requests[0].stream
    if keep_response:
        assert meta.response is not None and meta.response["object"] == "chat.completion"
        assert meta.response["choices"][0]["message"]["content"] == "echo: a b c d e f g h"
    # The connection went back to the pool: the next request reuses it.
    run(outcome(OpenAIBackend("m", base_url=server.base_url)))
    assert server.connections_accepted == 2  # one per backend (each has its own pool)


def test_a_whole_json_error_where_a_stream_was_asked_is_the_servers_error(server: ScriptedServer) -> None:
    error = {"message": "the model is overloaded", "type": "overloaded_error", "code": 529}
    server.script(status(200, body={"error": error}))
    mot = run(outcome(OpenAIBackend("m", base_url=server.base_url)))
    assert isinstance(mot.error, StreamError) and "the model is overloaded" in str(mot.error)
    said = (mot.error.message, mot.error.type, mot.error.code)
    assert said == ("the model is overloaded", "overloaded_error", 529)


# -- an error event mid-stream ------------------------------------------------------------


@pytest.mark.parametrize("keep_response", [False, True], ids=["fast-path", "generic-path"])
@pytest.mark.parametrize("delivery", ["one-read", "one-write", "separate-reads"])
@pytest.mark.parametrize("after", [1, 3, 6])
def test_an_error_event_keeps_every_delta_before_it(
    server: ScriptedServer, after: int, delivery: str, keep_response: bool
) -> None:
    error = {"message": "engine crashed", "type": "InternalServerError", "code": 500}
    # One HTTP chunk; several HTTP chunks in one write; a write each, apart.
    spread: dict[str, Any] = {
        "one-read": {"coalesce": True}, "one-write": {}, "separate-reads": {"gap": 0.02}
    }[delivery]
    server.script(error_event(after, error, **spread))
    mot = run(outcome(OpenAIBackend("m", base_url=server.base_url), keep_response=keep_response))
    before = "".join(ANSWER[:after])
    assert isinstance(mot.error, StreamError)
    assert mot.text == before and mot.error.partial_text == before
    said = (mot.error.message, mot.error.type, mot.error.code)
    assert said == ("engine crashed", "InternalServerError", 500) and mot.error.body == error
    assert "engine crashed" in str(mot.error) and "InternalServerError" in str(mot.error)
    assert len(server.chat_requests) == 1  # never retried after content


@pytest.mark.parametrize("coalesce", [True, False], ids=["one-read", "one-write"])
def test_an_sse_event_named_error_keeps_every_delta_before_it(server: ScriptedServer, coalesce: bool) -> None:
    error = {"message": "out of memory", "type": "server_error", "code": "oom"}
    server.script(error_event(3, error, named=True, coalesce=coalesce))
    mot = run(outcome(OpenAIBackend("m", base_url=server.base_url)))
    assert isinstance(mot.error, StreamError)
    assert mot.text == mot.error.partial_text == "echo: a b"
    assert (mot.error.message, mot.error.type, mot.error.code) == ("out of memory", "server_error", "oom")


def test_an_error_event_before_any_content_fails_with_empty_partial_text(server: ScriptedServer) -> None:
    server.script(error_event(0, {"message": "bad prompt", "type": "invalid_request_error", "code": 400}))
    mot = run(outcome(OpenAIBackend("m", base_url=server.base_url)))
    assert isinstance(mot.error, StreamError) and mot.text == "" and mot.error.partial_text == ""
    assert (mot.error.message, mot.error.code) == ("bad prompt", 400)


# -- a broken connection ---------------------------------------------------------------------


def test_a_broken_connection_names_the_likely_causes_in_order(server: ScriptedServer) -> None:
    server.script(drop_after(2))
    mot = run(outcome(OpenAIBackend("m", base_url=server.base_url)))
    message = str(mot.error)
    assert isinstance(mot.error, StreamError) and mot.error.partial_text == mot.text == "echo: a"
    causes = ["server restarted or crashed", "proxy or load balancer cut the stream", "base_url"]
    positions = [message.index(cause) for cause in causes]
    assert positions == sorted(positions), message
    assert "after 7 characters of content had been delivered" in message and "not retried" in message


def test_a_socks_proxy_is_ignored_with_a_warning(
    server: ScriptedServer, proxy_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    proxy_env.setenv("ALL_PROXY", "socks5://user:hidden@127.0.0.1:1080")
    assert run(texts(OpenAIBackend("m", base_url=server.base_url), ["direct"])) == ["echo: direct"]
    assert "ignoring the proxy socks5://user:***@127.0.0.1:1080" in caplog.text
    assert "hidden" not in caplog.text


def test_a_proxys_own_failure_is_reported_with_its_words(proxy_env: pytest.MonkeyPatch) -> None:
    with running_proxy({}) as proxy:  # knows no host: answers 502 itself
        proxy_env.setenv("HTTP_PROXY", proxy.url)
        mot = run(outcome(OpenAIBackend("m", base_url="http://llm.internal/v1", max_retries=0)))
        assert [r.target for r in proxy.requests] == ["http://llm.internal/v1/chat/completions"]
    assert isinstance(mot.error, ServerError) and mot.error.status_code == 502
    assert "the proxy does not know host 'llm.internal'" in str(mot.error)
