"""The simulated vLLM server behaves like vLLM's scheduler: slots, a FIFO queue, a prefix cache.

Clients are raw sockets (the scripted server's tests' ``Wire``), so a test
sees each chunk as the server writes it and can leave at any moment.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.servers.test_scripted import Response, Wire, chat, read_line
from tests.servers.vllm_sim import VllmSim, running_sim

REPO = Path(__file__).resolve().parents[2]
BOUND = 10.0  # seconds: every wait in these tests
FAST = {"decode_base": 1e-3, "decode_per_seq": 0.0, "prefill_token_time": 0.0}
QUICK = {**FAST, "decode_base": 1e-5}  # many requests one after another


def words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def ask(sim: VllmSim, body: dict[str, Any]) -> Response:
    with Wire(sim.port) as wire:
        wire.post(body)
        return wire.response()


def metrics(sim: VllmSim) -> dict[str, float]:
    """``/metrics`` as {name: value}: labels dropped (one model, one engine) but a bucket's ``le``."""
    with Wire(sim.port) as wire:
        wire.get("/metrics")
        response = wire.response()
    assert response.status == 200 and response.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = {}
    for line in response.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, labels, value = re.fullmatch(r"([^{ ]+)(?:\{(.*)\})? (\S+)", line).groups()  # type: ignore[union-attr]
            le = re.search(r'le="([^"]+)"', labels or "")
            out[f'{name}{{le="{le.group(1)}"}}' if le else name] = float(value)
    return out


@pytest.fixture
def wires() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def open_stream(sim: VllmSim, stack: ExitStack, body: dict[str, Any]) -> Wire:
    wire = stack.enter_context(Wire(sim.port))
    wire.post(body)
    assert wire.head()[0] == 200
    return wire


# ---------------------------------------------------------------- the wire


def test_streamed_answer_in_vllms_shapes() -> None:
    with running_sim(**FAST) as sim:
        body = chat("hello there", max_tokens=5, stream_options={"include_usage": True})
        body["messages"].insert(0, {"role": "system", "content": "be brief"})
        response = ask(sim, body)
    assert response.status == 200 and response.headers["content-type"] == "text/event-stream"
    assert response.events[-1] == b"data: [DONE]"
    first, *tokens, usage = response.chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in tokens] == [
        "echo:",
        " hello",
        " there",
        " tok3",
        " tok4",
    ]
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 4 + ["length"]
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 5,
                                                          "total_tokens": 9}  # fmt: skip


def test_non_streamed_answer_and_other_endpoints() -> None:
    with running_sim(models=("a", "b"), default_tokens=3, **FAST) as sim:
        answer = ask(sim, chat("hi", stream=False)).json()
        with Wire(sim.port) as wire:
            wire.get("/v1/models")
            listed = wire.response().json()
            wire.get("/health")
            health = wire.response().status
            wire.get("/nowhere")
            missing = wire.response().status
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "echo: hi tok2"
    assert answer["choices"][0]["finish_reason"] == "stop" and answer["usage"]["completion_tokens"] == 3
    assert [m["id"] for m in listed["data"]] == ["a", "b"]
    assert (health, missing) == (200, 404)


def test_no_metrics_when_turned_off() -> None:
    with running_sim(metrics=False, **FAST) as sim, Wire(sim.port) as wire:
        wire.get("/metrics")
        assert wire.response().status == 404


# ---------------------------------------------------------------- slots and the queue


def test_metrics_show_running_and_waiting_while_loaded(wires: ExitStack) -> None:
    with running_sim(slots=2, decode_base=0.01) as sim:
        streams = [open_stream(sim, wires, chat(f"p{i}", max_tokens=10_000)) for i in range(5)]
        sim.wait_for(lambda s: s["running"] == 2 and s["waiting"] == 3, BOUND)
        seen = metrics(sim)
        assert seen["vllm:num_requests_running"] == 2 and seen["vllm:num_requests_waiting"] == 3
        assert seen["vllm:kv_cache_usage_perc"] > 0
        for wire in streams:
            wire.close()
        sim.wait_for(lambda s: s["disconnects"] == 5 and s["running"] == 0 and s["waiting"] == 0, BOUND)
        assert sim.stats()["max_running"] == 2 and 3 <= sim.stats()["max_waiting"] <= 5


def test_a_waiting_request_gets_its_first_token_only_after_a_slot_frees(wires: ExitStack) -> None:
    with running_sim(slots=1, decode_base=0.005) as sim:
        first = open_stream(sim, wires, chat("first", max_tokens=10_000))
        sim.wait_for(lambda s: s["running"] == 1, BOUND)
        second = open_stream(sim, wires, chat("second", max_tokens=3))
        sim.wait_for(lambda s: s["waiting"] == 1, BOUND)
        tokens = sim.stats()["generation_tokens"]
        # Ten more steps of the first: admitted, the second would have had its token by now.
        sim.wait_for(lambda s: s["generation_tokens"] >= tokens + 10, BOUND)
        assert second.quiet_for(0) and second.buf == b""
        first.close()
        assert [c["choices"][0]["delta"].get("content") for c in Response(200, {"transfer-encoding": "chunked"},
                second.body({"transfer-encoding": "chunked"})).chunks] == ["", "echo:", " second", " tok2"]  # fmt: skip
        sim.wait_for(lambda s: s["served"] == 1 and s["disconnects"] == 1, BOUND)
        assert sim.stats()["prompts"] == ["second"]


def test_a_client_that_leaves_frees_its_slot_or_its_place_at_once(wires: ExitStack) -> None:
    with running_sim(slots=1, decode_base=0.005) as sim:
        running = open_stream(sim, wires, chat("running", max_tokens=10_000))
        sim.wait_for(lambda s: s["running"] == 1, BOUND)
        queued = open_stream(sim, wires, chat("queued", max_tokens=10_000))
        sim.wait_for(lambda s: s["waiting"] == 1, BOUND)
        queued.close()
        sim.wait_for(lambda s: s["waiting"] == 0 and s["disconnects"] == 1, BOUND)
        running.close()
        sim.wait_for(lambda s: s["running"] == 0 and s["disconnects"] == 2, BOUND)
        assert ask(sim, chat("next", max_tokens=2)).status == 200
        assert sim.stats()["served"] == 1


def test_decode_steps_slow_down_as_more_sequences_run() -> None:
    options = {"decode_base": 0.002, "decode_per_seq": 0.002, "prefill_token_time": 0.0}

    def seconds_for(n: int) -> float:
        with running_sim(**options) as sim, ExitStack() as stack:
            started = time.monotonic()
            streams = [open_stream(sim, stack, chat(f"p{i}", max_tokens=40)) for i in range(n)]
            for wire in streams:
                wire.body({"transfer-encoding": "chunked"})
            return time.monotonic() - started

    # 40 steps of 4 ms alone; of 2 + 8 x 2 = 18 ms with 8 running.
    assert seconds_for(8) > 2.5 * seconds_for(1)


def test_prefill_takes_time_per_uncached_token() -> None:
    with running_sim(decode_base=0.001, decode_per_seq=0.0, prefill_token_time=2e-4) as sim:
        long = ask(sim, chat(words(2000, "a"), max_tokens=1, stream_options={"include_usage": True}))
        short = ask(sim, chat("b", max_tokens=1))
        stats = sim.stats()
    assert long.status == short.status == 200
    long_ttft, short_ttft = stats["first_token_s"]
    assert long_ttft > 0.3 and short_ttft < long_ttft / 4  # 2,000 tokens x 0.2 ms = 0.4 s


# ---------------------------------------------------------------- the prefix cache


def with_system(system: str, user: str) -> dict[str, Any]:
    body = chat(user, max_tokens=1)
    body["messages"].insert(0, {"role": "system", "content": system})
    return body


def test_a_cached_prefix_prefills_fewer_tokens_and_counts_hits() -> None:
    system = words(100, "s")
    with running_sim(**FAST) as sim:
        ask(sim, with_system(system, "one two"))
        after_first = sim.stats()
        ask(sim, with_system(system, "three four"))
        stats, seen = sim.stats(), metrics(sim)
    assert after_first["prefix_cache_hits"] == 0 and after_first["prefill_tokens"] == 102
    # The system prompt's six full blocks of 16 (96 tokens) were cached by the first.
    assert stats["prefix_cache_hits"] == 96 and stats["prefill_tokens"] == 102 + 6
    assert stats["prefix_cache_queries"] == stats["prompt_tokens"] == 204
    assert seen["vllm:prefix_cache_hits_total"] == 96 and seen["vllm:prefix_cache_queries_total"] == 204
    assert seen["vllm:prompt_tokens_total"] == 204 and seen["vllm:generation_tokens_total"] == 2
    assert seen["vllm:time_to_first_token_seconds_count"] == 2
    assert seen['vllm:time_to_first_token_seconds_bucket{le="+Inf"}'] == 2
    buckets = [v for k, v in seen.items() if k.startswith("vllm:time_to_first_token_seconds_bucket")]
    assert len(buckets) == 23 and buckets == sorted(buckets), "vLLM's 22 bounds and +Inf, cumulative"
    assert seen["vllm:time_to_first_token_seconds_sum"] > 0


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    with running_sim(**FAST) as sim:
        ask(sim, chat(words(32, "x"), max_tokens=1))
        ask(sim, chat(words(32, "x"), max_tokens=1))
        stats = sim.stats()
    assert stats["prefix_cache_hits"] == 16 and stats["prefill_tokens"] == 32 + 16


def test_the_cache_evicts_the_least_recently_used_block() -> None:
    a, b, c = (words(20, tag) for tag in "abc")  # one full block each
    with running_sim(cache_tokens=32, **FAST) as sim:  # two blocks

        def hits(prompt: str) -> int:
            before = sim.stats()["prefix_cache_hits"]
            ask(sim, chat(prompt, max_tokens=1))
            return int(sim.stats()["prefix_cache_hits"] - before)

        assert (hits(a), hits(b)) == (0, 0)
        assert hits(a) == 16  # refreshes a: b is now the least recently used
        assert hits(c) == 0  # evicts b
        assert (hits(a), hits(b)) == (16, 0)


# ---------------------------------------------------------------- options


def test_slow_after_makes_the_server_slower_after_that_many_seconds() -> None:
    with running_sim(decode_base=0.002, decode_per_seq=0.0, prefill_token_time=0.0, slow_after=0.5,
                     slow_factor=20) as sim:  # fmt: skip
        started = time.monotonic()
        durations = []
        while time.monotonic() - started < 0.5 + BOUND:
            t0 = time.monotonic()
            ask(sim, chat("x", max_tokens=10))
            durations.append((t0 - started, time.monotonic() - t0))
            if durations[-1][1] > 0.3:  # 10 steps of 40 ms: slow now
                break
    assert durations[0][1] < 0.2, "fast at first (10 steps of 2 ms)"
    assert durations[-1][1] > 0.3, "slow in the end"
    assert all(start + length >= 0.5 for start, length in durations if length > 0.3)


def test_long_fraction_makes_that_share_of_requests_generate_more() -> None:
    def lengths(seed: int) -> list[int]:
        out = []
        with (
            running_sim(long_fraction=0.25, long_factor=5, seed=seed, **QUICK) as sim,
            Wire(sim.port) as wire,
        ):
            for _ in range(200):
                wire.post(chat("same prompt", max_tokens=4, stream=False))
                out.append(wire.response().json()["usage"]["completion_tokens"])
        return out

    drawn = lengths(seed=1)
    assert set(drawn) == {4, 20}, "drawn per request: the same prompt is long only sometimes"
    assert 0.15 < drawn.count(20) / len(drawn) < 0.35
    assert lengths(seed=1) == drawn and lengths(seed=2) != drawn, "the seed fixes the sequence"


def test_reject_mode_answers_429_with_retry_after_beyond_capacity(wires: ExitStack) -> None:
    with running_sim(overflow="reject", capacity=2, service_time=BOUND, retry_after=1) as sim:
        held = [wires.enter_context(Wire(sim.port)) for _ in range(2)]
        for i, wire in enumerate(held):
            wire.post(chat(f"p{i}", max_tokens=2))
        sim.wait_for(lambda s: s["running"] == 2, BOUND)
        refused = ask(sim, chat("over", max_tokens=2))
        assert refused.status == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == 429
        for wire in held:
            wire.close()
        sim.wait_for(lambda s: s["running"] == 0 and s["disconnects"] == 2, BOUND)
        sim.reconfigure(service_time=0.01)
        answered = ask(sim, chat("now", max_tokens=2))
        assert answered.status == 200 and answered.text == "echo: now"
        assert sim.stats()["rejected"] == 1 and sim.stats()["served"] == 1


def test_reconfigure_changes_the_slots_at_run_time(wires: ExitStack) -> None:
    with running_sim(slots=1, decode_base=0.005) as sim:
        for i in range(3):
            open_stream(sim, wires, chat(f"p{i}", max_tokens=10_000))
        sim.wait_for(lambda s: s["running"] == 1 and s["waiting"] == 2, BOUND)
        sim.reconfigure(slots=3)
        sim.wait_for(lambda s: s["running"] == 3 and s["waiting"] == 0, BOUND)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_process_mode_prints_port_serves_and_prints_stats(sig: signal.Signals) -> None:
    argv = [sys.executable, "-m", "tests.servers.vllm_sim", "--port", "0", "--slots", "4",
            "--decode-base", "0.001", "--no-metrics"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "error"}
    process = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        word, port = read_line(process.stdout, BOUND).split()
        assert word == "PORT"
        with Wire(int(port)) as wire:
            wire.post(chat("hello", max_tokens=2))
            assert wire.response().text == "echo: hello"
            wire.get("/metrics")
            assert wire.response().status == 404
        process.send_signal(sig)
        out, err = process.communicate(timeout=BOUND)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=BOUND)
    assert process.returncode == 0 and err == "", err
    word, text = out.strip().split(" ", 1)
    stats = json.loads(text)
    assert word == "STATS" and stats["served"] == 1 and stats["prompts"] == ["hello"]
    assert len(stats["first_token_s"]) == 1


def test_it_is_fast() -> None:
    # The benchmarks' servers must not be their bottleneck: 1,024 streams of
    # 16 tokens on 16 keep-alive connections take about 0.5 s here; 10 s is a
    # bound for a loaded machine, not a measurement.
    def worker(sim: VllmSim) -> list[int]:
        with Wire(sim.port) as wire:
            codes = []
            for i in range(64):
                wire.post(chat(f"p{i}", max_tokens=16))
                codes.append(wire.response().status)
            return codes

    with running_sim(**FAST) as sim, ThreadPoolExecutor(16) as pool:
        started = time.monotonic()
        codes = [code for codes in pool.map(worker, [sim] * 16) for code in codes]
        elapsed = time.monotonic() - started
        assert sim.stats()["served"] == 1024 and sim.stats()["max_running"] > 1
    assert codes == [200] * 1024 and elapsed < BOUND


def test_an_empty_prompt_is_answered_like_any_other() -> None:
    with running_sim(**FAST) as sim:
        response = ask(sim, {"model": "m", "messages": [{"role": "user", "content": ""}], "stream": True,
                             "max_tokens": 2})  # fmt: skip
    assert response.chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert response.text == "echo: tok1" and sim.stats()["first_token_s"][0] > 0


def test_a_long_prefill_is_chunked_over_steps_while_others_decode(wires: ExitStack) -> None:
    # 640 prompt tokens at 64 a step: ten steps of 20 ms before the first token,
    # while a running sequence keeps getting one token a step (its budget comes first).
    with running_sim(
        max_batched_tokens=65, decode_base=0.02, decode_per_seq=0.0, prefill_token_time=0.0
    ) as sim:
        open_stream(sim, wires, chat("running", max_tokens=10_000))
        sim.wait_for(lambda s: s["generation_tokens"] >= 1, BOUND)
        before = sim.stats()["generation_tokens"]
        long = ask(sim, chat(words(640, "w"), max_tokens=1))
        during = sim.stats()["generation_tokens"] - before
    assert long.status == 200
    assert sim.stats()["first_token_s"][0] >= 10 * 0.02 * 0.9
    assert during >= 10, "the running sequence decoded through the chunked prefill"
