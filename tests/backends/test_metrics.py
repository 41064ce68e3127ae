"""Server metrics for ``max_concurrency="auto"``: the page's parser, finding it, and the knee.

The parser runs on exposition text as each server kind writes it (labels,
several series, histograms around the two gauges). Finding the page and
holding a server at its knee run through the real OpenAIBackend against the
simulated vLLM server (``tests/servers/vllm_sim.py``: continuous batching,
a waiting queue, ``/metrics``) and the scripted server (no ``/metrics``: 404).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from motio import ConfigurationError
from motio.backends import OpenAIBackend
from motio.backends.http._metrics import ServerLoad, metrics_url_of, parse_load
from tests.asyncutil import run
from tests.servers.scripted import running
from tests.servers.vllm_sim import VllmSim, running_sim

VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 48.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 16.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.41
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1203.0
vllm:num_requests_running_but_not_this{engine="0"} 99.0
"""

SGLANG = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 28.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.28
"""

TGI = """\
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 12
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 4096
# TYPE tgi_queue_size gauge
tgi_queue_size 2
# TYPE tgi_request_count counter
tgi_request_count 5120
"""

LLAMA_CPP = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 4
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""


@pytest.mark.parametrize(
    ("page", "load"),
    [
        pytest.param(VLLM, ServerLoad(64.0, 3.0), id="vllm-two-engines"),
        pytest.param(SGLANG, ServerLoad(28.0, 7.0), id="sglang"),
        pytest.param(TGI, ServerLoad(12.0, 2.0), id="tgi"),
        pytest.param(LLAMA_CPP, ServerLoad(4.0, 1.0), id="llama-cpp"),
    ],
)
def test_each_server_kinds_page_gives_running_and_waiting_summed_over_series(
    page: str, load: ServerLoad
) -> None:
    assert parse_load(page) == load


@pytest.mark.parametrize(
    "page",
    [
        pytest.param("", id="empty"),
        pytest.param("<html>Not Found</html>\n", id="html"),
        pytest.param("# HELP go_goroutines\ngo_goroutines 12\n", id="other-metrics"),
        pytest.param('vllm:num_requests_running{model_name="m"} 3\n', id="running-without-waiting"),
    ],
)
def test_a_page_without_both_counts_is_no_reading(page: str) -> None:
    assert parse_load(page) is None


def test_nan_and_unparsable_values_are_skipped() -> None:
    page = (
        'vllm:num_requests_running{a="1"} NaN\nvllm:num_requests_running{a="2"} 5\n'
        "vllm:num_requests_waiting x\nvllm:num_requests_waiting 0\n"
    )
    assert parse_load(page) == ServerLoad(5.0, 0.0)


def test_the_page_is_found_at_the_origin_without_credentials() -> None:
    assert metrics_url_of("http://user:pw@10.0.0.2:8000/v1") == "http://10.0.0.2:8000/metrics"
    assert metrics_url_of("https://host/api/v1") == "https://host/metrics"


def test_bad_metrics_urls_are_configuration_errors() -> None:
    urls = ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"]
    with pytest.raises(ConfigurationError, match="one http"):
        OpenAIBackend("m", base_url=urls, max_concurrency="auto", metrics_url="http://127.0.0.1:1/metrics")
    with pytest.raises(ConfigurationError):
        OpenAIBackend("m", base_url=urls[0], max_concurrency="auto", metrics_url=["ftp://x"])


def test_a_server_without_metrics_is_tried_once_and_left_silently(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="motio")
    with running() as server:
        backend = OpenAIBackend("scripted-model", base_url=server.base_url, max_concurrency="auto")
        adaptive = backend.adaptive_concurrency
        assert adaptive is not None and adaptive.scraper is not None

        async def main() -> None:
            async with backend:
                for _ in range(3):  # the first request starts the look; the next ones wait for it
                    mot = await backend.generate("hi", max_tokens=2)
                    await mot.avalue()
                    await _until(lambda: not adaptive.scraper.active)  # type: ignore[union-attr]
                mots = [await backend.generate("hi", max_tokens=2) for _ in range(20)]
                await asyncio.gather(*(m.avalue() for m in mots))

        run(main())
        looked = [r for r in server.requests if r.path == "/metrics"]
    assert len(looked) == 1 and looked[0].status == 404
    assert not adaptive.reads_metrics
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


def test_no_metrics_means_no_page_is_asked_for() -> None:
    with running() as server:
        backend = OpenAIBackend(
            "scripted-model", base_url=server.base_url, max_concurrency="auto", metrics_url=False
        )
        assert backend.adaptive_concurrency is not None and backend.adaptive_concurrency.scraper is None

        async def main() -> None:
            async with backend:
                mots = [await backend.generate("hi", max_tokens=2) for _ in range(10)]
                await asyncio.gather(*(m.avalue() for m in mots))

        run(main())
        assert not [r for r in server.requests if r.path == "/metrics"]


def test_a_given_page_that_fails_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    with running() as server:
        page = server.base_url.removesuffix("/v1") + "/not-metrics"
        backend = OpenAIBackend(
            "scripted-model", base_url=server.base_url, max_concurrency="auto", metrics_url=page
        )

        async def main() -> None:
            async with backend:
                for _ in range(2):
                    mot = await backend.generate("hi", max_tokens=2)
                    await mot.avalue()
                    await _until(lambda: bool([r for r in server.requests if r.path == "/not-metrics"]))
                    await asyncio.sleep(0.6)  # past the scrape interval: the next request scrapes again
                mot = await backend.generate("hi", max_tokens=2)
                await mot.avalue()
                await _until(lambda: len([r for r in server.requests if r.path == "/not-metrics"]) >= 2)

        run(main())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "metrics" in r.getMessage()]
    assert len(warnings) == 1 and "HTTP 404" in warnings[0].getMessage()


async def _until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# -- the knee, on the simulated vLLM server -----------------------------------------------

SLOTS = 12


@pytest.fixture
def sim() -> Iterator[VllmSim]:
    with running_sim(slots=SLOTS, default_tokens=16) as server:
        yield server


def run_at_the_knee(
    sim: VllmSim, prompts: int, **options: Any
) -> tuple[OpenAIBackend, list[int], list[dict[str, Any]]]:
    """Run ``prompts`` through ``auto``; the limit and the server's counts
    sampled while the second half of the prompts completed (the server
    fully loaded, the controller past its start)."""
    backend = OpenAIBackend("sim-model", base_url=sim.base_url, max_concurrency="auto", **options)
    limits: list[int] = []
    loads: list[dict[str, Any]] = []
    done = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            if prompts // 2 <= done[0] < prompts - prompts // 10:
                stats = sim.stats()
                loads.append({"running": stats["running"], "waiting": stats["waiting"]})

    async def one(i: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            mot = await backend.generate(f"question {i} " + "w " * 30, max_tokens=16)
            await mot.avalue()
        done[0] += 1
        if prompts // 2 <= done[0] < prompts - prompts // 10:
            adaptive = backend.adaptive_concurrency
            assert adaptive is not None
            limits.append(adaptive.limit)

    async def main() -> None:
        gate = asyncio.Semaphore(4 * SLOTS)  # a batch's read-ahead: more than the knee, less than the bound
        async with backend:
            await asyncio.gather(*(one(i, gate) for i in range(prompts)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run(main(), timeout=110)
    finally:
        stop.set()
        sampler.join(10)
    return backend, limits, loads


def test_with_metrics_auto_settles_at_capacity_with_nothing_waiting(sim: VllmSim) -> None:
    backend, limits, loads = run_at_the_knee(sim, 1200)
    adaptive = backend.adaptive_concurrency
    assert adaptive is not None and adaptive.scraper is not None and adaptive.scraper.active
    settled = statistics.median(limits)
    assert SLOTS - 1 <= settled <= SLOTS + 1, (settled, adaptive.snapshot())
    # Every slot busy, the queue near empty: a request that arrives during a
    # step waits for the next one, so a few readings show one or two waiting.
    assert statistics.median(load["waiting"] for load in loads) <= 1, loads
    assert statistics.median(load["running"] for load in loads) >= SLOTS - 2, loads


def test_without_metrics_auto_holds_no_standing_queue(sim: VllmSim) -> None:
    backend, limits, loads = run_at_the_knee(sim, 1200, metrics_url=False)
    adaptive = backend.adaptive_concurrency
    assert adaptive is not None and adaptive.scraper is None
    settled = statistics.median(limits)
    # First-token latency carries the busy machine's noise: below the
    # capacity is allowed, a standing queue above it is not.
    assert SLOTS // 2 <= settled <= SLOTS + 2, (settled, adaptive.snapshot())
    assert statistics.median(load["waiting"] for load in loads) <= 2, loads


@pytest.mark.parametrize("metrics", [True, False], ids=["metrics", "no-metrics"])
def test_a_429_storm_costs_no_request_and_few_refusals(metrics: bool) -> None:
    count = 200
    with running_sim(overflow="reject", capacity=8, service_time=0.1, retry_after=1) as storm:
        backend = OpenAIBackend(
            "sim-model", base_url=storm.base_url, max_concurrency="auto", max_retries=8,
            metrics_url=None if metrics else False,
        )  # fmt: skip

        async def main() -> list[str]:
            async with backend:
                mots = [await backend.generate(f"p {i}", max_tokens=2) for i in range(count)]
                return [str(v) for v in await asyncio.gather(*(m.avalue() for m in mots))]

        values = run(main(), timeout=110)
        stats = storm.stats()
    assert len(values) == count and stats["served"] == count
    # A halving per refused probe (with its 1 s waits) cost more than a small
    # batch; now only the first overshoot and a rare probe are refused.
    assert stats["rejected"] <= 20, stats["rejected"]
