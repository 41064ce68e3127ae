"""Counters and percentiles for ``motio run``'s progress line and end summary.

Latencies are kept in a :class:`~._sketch.Quantiles` (exact for a small
run, a 1% sketch past a few thousand), so the counters stay a few KB
however many prompts run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._formats import own_view
from ._records import PromptFormat
from ._sketch import Quantiles, exact_percentile

__all__ = ["RunStats", "format_summary", "percentile"]


def percentile(values: Sequence[float] | Quantiles, q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation, or None if empty.

    Same definition as NumPy's default, so figures compare with other tools
    (a :class:`Quantiles` past its exact size answers within 1%).
    """
    if isinstance(values, Quantiles):
        return values.percentile(q)
    return exact_percentile(values, q)


@dataclass
class RunStats:
    """What one ``motio run`` did; results from earlier runs are only counted.

    Attributes:
        total: valid input lines.
        already_done: lines skipped because a previous run finished them.
        already_failed: lines skipped because a previous run recorded an error.
        bad_lines: input lines that could not run.
        ok, failed: results written by this run.
        retries: requests retried (429s, 5xx, resets before the first token).
        rate_limited: 429 answers among them.
        reruns: prompts run again from their start after a stream broke
            mid-answer (each re-run counted; the lines' ``attempts`` - 1).
        timeouts: failed prompts by kind of timeout (error class name).
        concurrency: the requests in flight allowed now (for the progress
            line; set by the run from the backend's adaptive gate).
        fmt: the prompts file's shape (``"motio"``/``"openai-batch"``), once known.
        streaming_input: the prompts are read once as they come (stdin):
            ``total`` grows while the run goes, so it is no total yet.
        tokens_by_model: per model, ``[prompt, completion]`` tokens this run
            was answered with (answers from the cache not counted).
        invalid_answers, reasks, gave_up: with an output schema: answers
            that were not valid, prompts asked again for them, and prompts
            left with ``InvalidOutput``.
        cached: results answered from the response cache, nothing sent.
        raced: prompts whose straggling request was sent again to another
            server (one extra request each; lines with ``"raced": true``).
        race_wins: those whose written answer is the re-sent request's.
        schema, cache: whether the run has an output schema, and its
            cache's path (None: no cache), for the summary's lines.
    """

    total: int = 0
    already_done: int = 0
    already_failed: int = 0
    bad_lines: int = 0
    ok: int = 0
    failed: int = 0
    completion_tokens: int = 0
    latencies_ms: Quantiles = field(default_factory=Quantiles)
    ttfb_ms: Quantiles = field(default_factory=Quantiles)
    retries: int = 0
    rate_limited: int = 0
    reruns: int = 0
    timeouts: dict[str, int] = field(default_factory=dict)
    concurrency: int | None = None
    started: float = field(default_factory=time.perf_counter)
    fmt: str | None = None
    streaming_input: bool = False
    tokens_by_model: dict[str, list[int]] = field(default_factory=dict)
    invalid_answers: int = 0
    reasks: int = 0
    gave_up: int = 0
    cached: int = 0
    raced: int = 0
    race_wins: int = 0
    schema: bool = False
    cache: str | None = None

    @property
    def to_run(self) -> int:
        return self.total - self.already_done - self.already_failed

    def record(self, result: dict[str, Any], attempts: Any = None) -> None:
        """Count one written result line (either shape) and, if given, its ``Attempts``."""
        result = own_view(result)
        error = result.get("error")
        if error is None:
            self.ok += 1
        else:
            self.failed += 1
            if error.get("type", "").endswith("TimeoutError"):
                self.timeouts[error["type"]] = self.timeouts.get(error["type"], 0) + 1
        runs = result.get("attempts")
        if runs:
            self.reruns += runs - 1
        if attempts is not None:
            self.retries += attempts.retries
            self.rate_limited += attempts.statuses.count(429)
        if result.get("latency_ms") is not None:
            self.latencies_ms.append(result["latency_ms"])
        if result.get("ttfb_ms") is not None:
            self.ttfb_ms.append(result["ttfb_ms"])
        if result.get("raced"):
            self.raced += 1
            self.race_wins += bool(result.get("race_won"))
        usage = result.get("usage")
        if "reasks" in result or "cached" in result:
            self._record_answering(result, error)
            if result.get("cached"):
                return  # paid for by an earlier run
        if usage:
            completion = usage.get("completion_tokens") or 0
            self.completion_tokens += completion
            model = result.get("model") or "(model not named)"
            counts = self.tokens_by_model.get(model)
            if counts is None:
                counts = self.tokens_by_model[model] = [0, 0]
            counts[0] += usage.get("prompt_tokens") or 0
            counts[1] += completion

    def _record_answering(self, result: dict[str, Any], error: Any) -> None:
        """The schema's and the cache's counts, from a line of a run with either."""
        if result.get("cached"):
            self.cached += 1
        reasks = result.get("reasks") or 0
        self.reasks += reasks
        self.invalid_answers += reasks
        if error is not None and error.get("type") == "InvalidOutput":
            self.invalid_answers += 1
            self.gave_up += 1

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def tokens_per_second(self) -> float:
        elapsed = self.elapsed()
        return self.completion_tokens / elapsed if elapsed > 0 else 0.0


def format_summary(stats: RunStats) -> list[str]:
    """The end-of-run summary as plain lines (no colour, fit for logs)."""
    done = stats.ok + stats.failed
    headline = (
        f"{done} of {stats.to_run} prompts in {stats.elapsed():.1f}s: {stats.ok} ok, {stats.failed} failed"
    )
    lines = [headline]
    if stats.fmt is not None:
        lines.append(f"format: {PromptFormat(stats.fmt).label}")
    skipped = _skipped_note(stats)
    if skipped:
        lines.append(skipped)
    if stats.latencies_ms:
        lines.append("latency " + _p50_p95(stats.latencies_ms))
    if stats.ttfb_ms:
        lines.append("first token " + _p50_p95(stats.ttfb_ms))
    lines.append(f"{stats.completion_tokens} completion tokens, {stats.tokens_per_second():.1f} tokens/s")
    lines.extend(_tokens_per_model(stats))
    if stats.schema:
        lines.append(
            f"invalid answers: {stats.invalid_answers} ({stats.reasks} re-asks; "
            f"{stats.gave_up} prompts left with InvalidOutput)"
        )
    if stats.cache is not None:
        lines.append(f"from the cache: {stats.cached} of {done} answers ({stats.cache})")
    reliability = _reliability_note(stats)
    if reliability:
        lines.append(reliability)
    return lines


def _tokens_per_model(stats: RunStats) -> list[str]:
    """A line per model: what a user multiplies by its prices."""
    return [
        f"{model}: {prompt:,} prompt + {completion:,} completion tokens"
        for model, (prompt, completion) in sorted(stats.tokens_by_model.items())
    ]


def _reliability_note(stats: RunStats) -> str:
    parts = [f"{stats.retries} retries ({stats.rate_limited} after HTTP 429)"] if stats.retries else []
    if stats.reruns:
        parts.append(f"re-run after a broken stream: {stats.reruns}")
    if stats.raced:
        parts.append(f"raced on another server: {stats.raced} ({stats.race_wins} won there)")
    if stats.timeouts:
        kinds = ", ".join(f"{count} {name}" for name, count in sorted(stats.timeouts.items()))
        parts.append(f"timeouts: {kinds}")
    if stats.concurrency is not None:
        parts.append(f"concurrency settled at {stats.concurrency}")
    return "; ".join(parts)


def _skipped_note(stats: RunStats) -> str:
    parts = []
    if stats.already_done:
        parts.append(f"{stats.already_done} already done")
    if stats.already_failed:
        parts.append(f"{stats.already_failed} failed before (re-run them with --retry-errors)")
    if stats.bad_lines:
        parts.append(f"{stats.bad_lines} bad input lines")
    return "skipped: " + ", ".join(parts) if parts else ""


def _p50_p95(values: Quantiles) -> str:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    return f"p50 {_ms(p50)}, p95 {_ms(p95)}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"
