"""``motio.batch.run``: the batch from Python, in this process and on Ray workers."""

from __future__ import annotations

import functools
import json
import pickle
from collections import Counter
from pathlib import Path

import pytest

from motio import ConfigurationError, batch
from motio.backends import LlamaCppBackend, OpenAIBackend
from motio.backends.http._adaptive import SharedGate, Signals
from motio.batch import PromptRecord
from motio.batch._ray import Coordinator
from motio.batch._share import SharePlan
from tests.servers.scripted import running


def prompts(count: int) -> list[dict[str, object]]:
    return [{"id": f"p{i}", "prompt": f"Say the number {i}."} for i in range(count)]


def test_run_on_ray_yields_every_result_once_and_resumes(tmp_path: Path, ray_address: str) -> None:
    out = tmp_path / "out.jsonl"
    with running() as a, running() as b:
        build = functools.partial(OpenAIBackend, base_url=[a.base_url, b.base_url], max_concurrency=8)
        first = []
        for result in batch.run(prompts(300), build, ray=ray_address, workers=2, output=out):
            first.append(result)
            if len(first) == 100:
                break  # a notebook user stops early...
        written_first = {json.loads(line)["id"] for line in out.read_text().splitlines()}
        again = list(batch.run(prompts(300), build, ray=ray_address, workers=2, output=out))
        served = len(a.chat_requests) + len(b.chat_requests)
    assert len(first) == 100 and all(r["error"] is None for r in first + again)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    counts = Counter(line["id"] for line in lines)
    # ...and the rerun runs only what the file does not hold: every id once.
    assert counts == Counter(f"p{i}" for i in range(300))
    # What the first run yielded was written; the rerun ran exactly the rest.
    assert {r["id"] for r in first} <= written_first
    assert {r["id"] for r in again} == set(counts) - written_first
    # Prompts in flight when the consumer stopped were not answered: sent again.
    assert served >= 300


def test_run_in_this_process_takes_strings_and_records(ray_address: str) -> None:
    items: list[object] = ["Say the number 0.", PromptRecord("r1", 2, "Say the number 1.", {"max_tokens": 2})]
    # A backend given stays the caller's to close: the batch ran on run_sync's
    # loop, where the backend's client lives on for its next call.
    with running() as a, OpenAIBackend(base_url=a.base_url) as backend:
        results = {r["id"]: r for r in batch.run(items, backend)}
    assert results["line-1"]["output"] == "echo: Say the number 0."
    assert results["r1"]["output"] == "echo: Say" and results["r1"]["finish_reason"] == "length"


def test_a_backend_object_on_ray_is_rebuilt_in_each_worker_with_its_key(ray_address: str) -> None:
    with running(api_key="sk-test") as a:
        backend = OpenAIBackend(base_url=a.base_url, api_key="sk-test", max_concurrency=4)
        results = list(batch.run(prompts(50), backend=backend, ray=ray_address, workers=2))
        # The workers' copies sent the key (the server refuses requests without it).
        assert len(a.chat_requests) == 50 and all(r.status == 200 for r in a.chat_requests)
    assert sorted(r["id"] for r in results) == sorted(f"p{i}" for i in range(50))
    assert all(r["error"] is None for r in results)
    assert not backend.is_closed  # the caller's backend is the caller's to close
    backend.close()


def test_a_recipe_pickles_and_builds_a_fresh_copy() -> None:
    backend = OpenAIBackend("m", base_url=["http://a:1/v1", "http://b:1/v1"], max_concurrency="auto", rpm=60)
    copy = pickle.loads(pickle.dumps(backend.recipe()))()
    assert copy is not backend and isinstance(copy, OpenAIBackend)
    assert (copy.model, copy.base_urls, copy.max_concurrency, copy.rpm) == (
        "m",
        backend.base_urls,
        "auto",
        60,
    )
    backend.close()
    copy.close()
    embedded = LlamaCppBackend(n_ctx=512)  # builds no model until it generates
    again = pickle.loads(pickle.dumps(embedded.recipe()))()
    assert isinstance(again, LlamaCppBackend) and again.model_path == embedded.model_path


def test_a_bad_prompt_is_a_clear_error() -> None:
    with (
        running() as a,
        OpenAIBackend(base_url=a.base_url) as backend,
        pytest.raises(ConfigurationError, match="prompt 2: 'prompt' must be a non-empty string"),
    ):
        list(batch.run([{"prompt": "ok"}, {"prompt": ""}], backend))


def test_the_coordinator_sets_one_limit_from_every_workers_signals() -> None:
    plan = SharePlan(actors=2, servers=("http://s/v1",), concurrency="auto", bound=64, initial=8)
    coordinator = Coordinator(plan)
    gates = [SharedGate(plan.share(plan.initial), plan.bound) for _ in range(2)]
    assert [g.limit for g in gates] == [4, 4]
    # Both workers see a fast server: the one controller grows the cluster's limit...
    for gate in gates:
        for _ in range(8):
            gate.record_first_token(0.01)
    coordinator.report(1, {"http://s/v1": gates[0].drain()})
    limit, epoch = coordinator.report(2, {"http://s/v1": gates[1].drain()})["http://s/v1"]
    assert limit > 8 and epoch >= 1
    for gate in gates:
        gate.set_limit(plan.share(limit), epoch)
    assert gates[0].limit == gates[1].limit == limit // 2
    # ...and one worker's 429 halves it for both.
    gates[0].record_overload()
    halved, _ = coordinator.report(1, {"http://s/v1": gates[0].drain()})["http://s/v1"]
    assert halved == limit // 2
    assert gates[1].drain() == Signals([], 0, 0)


def test_a_sample_carries_the_epoch_its_request_was_sent_in() -> None:
    gate = SharedGate(4, 64)
    gate.set_limit(4, 3)
    gate.record_first_token(3600.0)  # sent an hour ago: before epoch 3 was applied
    gate.record_first_token(0.0)  # sent now
    (old, old_epoch, _), (new, new_epoch, age) = gate.drain().first_tokens
    assert (old, old_epoch) == (3600.0, 0) and (new, new_epoch) == (0.0, 3)
    assert 0.0 <= age < 60.0


def test_a_reports_samples_sent_before_a_cut_do_not_cut_again() -> None:
    """A report brings a tenth of a second's samples at once. Those sent at
    the old limit still show its queue; judged as new, each round of them
    cut again, and the cluster's limit fell to 1 in one report."""
    url = "http://s/v1"
    coordinator = Coordinator(SharePlan(actors=2, servers=(url,), concurrency="auto", bound=256, initial=16))

    def report(count: int, seconds: float, epoch: int) -> tuple[int, int]:
        return coordinator.report(1, {url: Signals([(seconds, epoch, 0.0)] * count, 0, 8)})[url]

    # Slow start on a fast server: a round (half the limit) grows the limit and starts an epoch.
    assert report(8, 0.01, 0) == (24, 1)
    assert report(12, 0.01, 1) == (36, 2)
    # A queue (ten times the baseline): slow start ends with one cut.
    cut, epoch = report(18, 0.1, 2)
    assert cut < 36 and epoch == 3
    # Many more requests sent before the cut, as slow: they say nothing new,
    # nor after another worker's first sample sent at the new limit.
    assert report(200, 0.1, 2) == (cut, 3)
    assert report(1, 0.01, 3) == (cut, 3)
    assert report(200, 0.1, 2) == (cut, 3)
    # Sent after it, they are a queue at the new level.
    assert report(200, 0.1, 3)[0] < cut


def test_the_progress_line_lists_every_server_before_any_worker_reports(ray_address: str) -> None:
    from motio.batch._ray import RayPool
    from motio.cli._progress import server_loads

    pool = RayPool(functools.partial(OpenAIBackend, base_url=["http://a:1/v1", "http://b:1/v1"]), 1)
    try:
        pool.share(SharePlan(actors=1, servers=("http://a:1/v1", "http://b:1/v1"), concurrency=4))
        loads = server_loads(pool)
        assert loads is not None
        assert loads() == "a:1 0  b:1 0"  # none in flight yet, on either
    finally:
        pool.close()
