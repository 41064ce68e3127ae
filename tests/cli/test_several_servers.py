"""``motio run`` over several servers: spread, a server lost mid-run, start-up checks.

The command runs in a subprocess against scripted loopback servers
(tests/servers/scripted.py), each serving from its own thread; what each
server saw is asserted along with the results file, the exit status and
stderr. Waits on a server go through its bounded ``wait_for``.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path

from tests.servers.scripted import running, stall_before_headers

from .conftest import (
    EVENT_TIMEOUT,
    assert_clean,
    complete_lines,
    finish,
    ids_of,
    run_motio,
    start_motio,
    write_prompts,
)


def dead_url() -> str:
    """A URL on a port nobody listens on (free when asked)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def assert_each_id_once(out: Path, count: int) -> list[dict[str, object]]:
    lines = complete_lines(out)
    assert Counter(ids_of(lines)) == Counter(f"p{i}" for i in range(count))
    return lines


def test_prompts_are_spread_across_servers_each_id_once(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 300), tmp_path / "out.jsonl"
    with running() as a, running() as b:
        done = run_motio(
            "run", prompts, "-o", out, "--base-url", a.base_url, "--base-url", b.base_url, "-c", "4"
        )
        shares = len(a.chat_requests), len(b.chat_requests)
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    lines = assert_each_id_once(out, 300)
    assert all(line["error"] is None for line in lines)
    assert sum(shares) == 300 and min(shares) >= 75, shares
    assert "servers: " in done.stderr and " answered" in done.stderr


def test_the_endpoints_file_adds_servers_and_skips_comments(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 40), tmp_path / "out.jsonl"
    with running() as a, running() as b:
        listing = tmp_path / "servers.txt"
        listing.write_text(f"# the fleet\n\n{a.base_url}\n   {b.base_url}   # the second\n")
        done = run_motio("run", prompts, "-o", out, "--endpoints", listing, "-c", "2")
        assert a.chat_requests and b.chat_requests
    assert done.returncode == 0, done.stderr
    assert_each_id_once(out, 40)


def test_an_unusable_endpoints_file_is_a_usage_error(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 1), tmp_path / "out.jsonl"
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing but a comment\n\n")
    not_urls = tmp_path / "words.txt"
    not_urls.write_text("localhost:8000\n")
    for listing, says in [
        (tmp_path / "missing.txt", "cannot read it"),
        (empty, "no server URL"),
        (not_urls, ":1:"),
    ]:
        done = run_motio("run", prompts, "-o", out, "--endpoints", listing)
        assert done.returncode == 2, done.stderr
        assert says in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not out.exists()


def test_a_server_down_at_start_is_warned_about_and_the_run_proceeds(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 60), tmp_path / "out.jsonl"
    dead = dead_url()
    with running() as live:
        done = run_motio("run", prompts, "-o", out, "--base-url", dead, "--base-url", live.base_url)
        assert len(live.chat_requests) == 60
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and dead in warnings[0], done.stderr
    assert_each_id_once(out, 60)


def test_all_servers_down_exits_3_fast_on_one_line(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 5), tmp_path / "out.jsonl"
    urls = [dead_url(), dead_url(), dead_url()]
    started = time.monotonic()
    done = run_motio("run", prompts, "-o", out, *[arg for url in urls for arg in ("--base-url", url)])
    assert time.monotonic() - started < 15
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1 and "none of the 3 servers answers" in done.stderr
    assert all(url in done.stderr for url in urls) and not out.exists()


def test_a_server_lost_mid_run_loses_no_prompt(tmp_path: Path) -> None:
    count = 200
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    # The doomed server holds every request it gets without a byte of answer
    # (no content reached any thunk), then dies with them in flight.
    with running(default=stall_before_headers) as doomed, running() as healthy:
        servers = ["--base-url", doomed.base_url, "--base-url", healthy.base_url]
        proc = start_motio("run", prompts, "-o", out, *servers, "-c", "4")
        try:
            doomed.wait_for(lambda s: s.in_flight == 4, EVENT_TIMEOUT, "four held by the doomed server")
            healthy.wait_for(lambda s: s.completed == count - 4, EVENT_TIMEOUT, "the rest served")
            held = [r.prompt for r in doomed.chat_requests]
            doomed.crash()
        finally:
            code, _, err = finish(proc)
        answered = Counter(r.prompt for r in healthy.chat_requests if r.status == 200)
    assert code == 0, err
    assert_clean(err)
    lines = assert_each_id_once(out, count)
    assert all(line["error"] is None for line in lines)
    assert len(held) == 4 and all(answered[prompt] == 1 for prompt in held)
    moved = [line for line in lines if line["retries"]]
    assert len(moved) == 4


def test_the_run_stops_only_when_every_server_is_gone(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 20), tmp_path / "out.jsonl"
    with running(default=stall_before_headers) as a, running(default=stall_before_headers) as b:
        proc = start_motio(
            "run", prompts, "-o", out, "--base-url", a.base_url, "--base-url", b.base_url, "-c", "2"
        )
        try:
            for server in (a, b):
                server.wait_for(lambda s: s.in_flight == 2, EVENT_TIMEOUT, "two held on each server")
            a.crash()
            b.crash()
        finally:
            code, _, err = finish(proc)
    assert code == 3, err
    assert "none of the 2 servers answers" in err and "run the same command again to resume" in err
    assert complete_lines(out) == []


def test_spec_counts_servers_and_concurrency_per_server() -> None:
    from motio.cli._args import RunArgs
    from motio.cli._backend import BackendSpec
    from motio.cli._main import parse_args

    argv = ["run", "p", "-o", "o", "--base-url", "http://a/v1", "--base-url", "http://b/v1/", "-c", "8"]
    args = parse_args(argv)
    assert isinstance(args, RunArgs)
    spec = BackendSpec.from_args(args.backend)
    assert spec.base_url == "http://a/v1" and spec.base_urls == ("http://a/v1", "http://b/v1")
    assert (spec.servers, spec.per_server, spec.in_flight) == (2, 8, 16)
    args = parse_args(["run", "p", "-o", "o", "--base-url", "http://a/v1"])
    assert isinstance(args, RunArgs)
    one = BackendSpec.from_args(args.backend)
    assert one.base_urls == () and one.in_flight == 256


def test_the_progress_line_shows_each_servers_load() -> None:
    from motio.backends import OpenAIBackend
    from motio.cli._progress import server_loads, servers_summary

    assert server_loads(OpenAIBackend("m", base_url="http://127.0.0.1:1/v1")) is None
    backend = OpenAIBackend(
        "m", base_url=["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"], max_concurrency=4
    )
    loads = server_loads(backend)
    assert loads is not None and loads() == "127.0.0.1:1 0/4  127.0.0.1:2 0/4"
    assert servers_summary(backend) == "servers: 127.0.0.1:1 0 answered, 127.0.0.1:2 0 answered"
