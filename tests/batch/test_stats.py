"""Percentiles and the end-of-run summary."""

from __future__ import annotations

import pytest

from motio.batch._stats import RunStats, format_summary, percentile


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([10.0, 1.0, 5.0], 0, 1.0),
        ([10.0, 1.0, 5.0], 100, 10.0),
        ([float(i) for i in range(1, 101)], 95, 95.05),
    ],
)
def test_percentile_interpolates_like_numpy(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_none_and_bad_q_is_refused() -> None:
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)


def _result(error: object = None, latency: float = 100.0, tokens: int = 10) -> dict[str, object]:
    return {
        "error": error,
        "latency_ms": latency,
        "ttfb_ms": latency / 10,
        "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3},
    }


def test_record_counts_results_and_tokens() -> None:
    stats = RunStats(total=5, already_done=1)
    stats.record(_result(latency=100.0))
    stats.record(_result(latency=300.0, tokens=5))
    stats.record({"error": {"type": "X", "message": "m"}, "latency_ms": 50.0, "usage": None, "ttfb_ms": None})
    assert (stats.ok, stats.failed, stats.to_run) == (2, 1, 4)
    assert stats.completion_tokens == 15
    assert stats.latencies_ms == [100.0, 300.0, 50.0]
    assert stats.ttfb_ms == [10.0, 30.0]


def test_summary_names_counts_percentiles_and_throughput() -> None:
    stats = RunStats(total=4, already_done=1, already_failed=1, bad_lines=2)
    stats.record(_result(latency=100.0))
    stats.record(_result(latency=200.0))
    text = "\n".join(format_summary(stats))
    assert "2 of 2 prompts" in text and "2 ok, 0 failed" in text
    assert "1 already done" in text and "--retry-errors" in text and "2 bad input lines" in text
    assert "latency p50 150 ms, p95 195 ms" in text
    assert "first token p50 15 ms" in text
    assert "20 completion tokens" in text and "tokens/s" in text


def test_reruns_are_counted_from_the_lines_attempts_and_named_in_the_summary() -> None:
    stats = RunStats(total=3)
    stats.record({**_result(latency=100.0), "attempts": 1})
    assert "re-run" not in "\n".join(format_summary(stats))  # said only when it happened
    stats.record({**_result(latency=100.0), "attempts": 3})
    stats.record({**_result(latency=100.0), "attempts": 2})
    assert stats.reruns == 3
    assert "re-run after a broken stream: 3" in "\n".join(format_summary(stats))


def test_tokens_per_model_in_the_summary() -> None:
    stats = RunStats(total=4)
    usage = {"prompt_tokens": 12345, "completion_tokens": 6789}
    stats.record({**_result(tokens=6789), "model": "model-x", "usage": usage})
    stats.record({**_result(tokens=1), "model": "model-a"})
    stats.record({**_result(tokens=2), "model": "model-a"})
    stats.record({**_result(tokens=7), "model": "model-a", "cached": True})  # paid for before: not counted
    assert stats.tokens_by_model == {"model-x": [12345, 6789], "model-a": [6, 3]}
    lines = format_summary(stats)
    assert "model-a: 6 prompt + 3 completion tokens" in lines
    assert "model-x: 12,345 prompt + 6,789 completion tokens" in lines
    assert lines.index("model-a: 6 prompt + 3 completion tokens") < lines.index(
        "model-x: 12,345 prompt + 6,789 completion tokens"
    )
    assert "6792 completion tokens" in "\n".join(lines)  # the existing line stays


def test_invalid_answers_reasks_and_cache_in_the_summary() -> None:
    stats = RunStats(total=4, schema=True, cache="/tmp/c.sqlite3")
    stats.record({**_result(), "reasks": 1})
    stats.record({**_result(), "reasks": 0, "cached": True})
    invalid = {"type": "InvalidOutput", "message": "no valid answer"}
    stats.record({**_result(error=invalid), "reasks": 2})
    assert (stats.invalid_answers, stats.reasks, stats.gave_up, stats.cached) == (4, 3, 1, 1)
    lines = format_summary(stats)
    assert "invalid answers: 4 (3 re-asks; 1 prompts left with InvalidOutput)" in lines
    assert "from the cache: 1 of 3 answers (/tmp/c.sqlite3)" in lines


def test_no_schema_nor_cache_lines_without_them() -> None:
    stats = RunStats(total=1)
    stats.record(_result())
    text = "\n".join(format_summary(stats))
    assert "invalid answers" not in text and "from the cache" not in text
