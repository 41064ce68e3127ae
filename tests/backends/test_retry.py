"""Retry policy: which statuses, how long to wait, and the record of attempts."""

from __future__ import annotations

import email.utils
import json
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from motio import ConfigurationError, RateLimitError, ServerError
from motio.backends.http._retry import RETRYABLE_STATUSES, Attempts, RetryPolicy, retry_after_seconds

NOW = 1_700_000_000.0  # a fixed Unix time, so HTTP dates are checked exactly


def test_retryable_statuses_are_exactly_the_transient_ones() -> None:
    assert RETRYABLE_STATUSES == frozenset({408, 409, 429, 500, 502, 503, 504, 529})
    assert isinstance(RETRYABLE_STATUSES, frozenset)


# -- retry_after_seconds ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"RETRY-AFTER": " 2 "}, 2.0),
        ({"Retry-After": "-4"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "12.5"}, 0.0125),
        ({"retry-after-ms": "-10"}, 0.0),
        ({"retry-after-ms": "100", "Retry-After": "9"}, 0.1),  # the finer one wins
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),  # unless it is unparsable
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": ""}, None),
        ({"Content-Type": "application/json"}, None),
        ({}, None),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else str(v),
)
def test_retry_after_from_plain_headers(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers, now=NOW) == expected


def test_retry_after_from_aiohttp_style_case_insensitive_headers() -> None:
    raw: CIMultiDict[str] = CIMultiDict()
    raw.add("Retry-After", "7")
    assert retry_after_seconds(CIMultiDictProxy(raw)) == 7.0
    raw.add("Retry-After-MS", "1500")
    assert retry_after_seconds(CIMultiDictProxy(raw)) == 1.5


@pytest.mark.parametrize("zone", ["GMT", "+0000", "-0000"])
def test_retry_after_as_an_http_date(zone: str) -> None:
    date = email.utils.formatdate(NOW + 30, usegmt=True).replace("GMT", zone)
    assert retry_after_seconds({"Retry-After": date}, now=NOW) == pytest.approx(30.0)


def test_an_http_date_in_the_past_means_now() -> None:
    date = email.utils.formatdate(NOW - 30, usegmt=True)
    assert retry_after_seconds({"Retry-After": date}, now=NOW) == 0.0


def test_an_http_date_defaults_to_the_current_time() -> None:
    date = email.utils.formatdate(4_000_000_000, usegmt=True)  # the year 2096
    wait = retry_after_seconds({"Retry-After": date})
    assert wait is not None and wait > 365 * 24 * 3600


def test_a_garbled_http_date_is_unparsable() -> None:
    assert retry_after_seconds({"Retry-After": "Wed, 99 Foo 2015 77:28:00 GMT"}, now=NOW) is None


# -- RetryPolicy -----------------------------------------------------------------------


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_retries, policy.base_delay, policy.max_delay, policy.max_retry_after) == (
        2,
        0.5,
        8.0,
        60.0,
    )


@pytest.mark.parametrize(
    ("retry_number", "ceiling"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0), (30, 8.0)],
)
def test_backoff_is_full_jitter_under_a_doubling_ceiling(retry_number: int, ceiling: float) -> None:
    policy = RetryPolicy()
    assert policy.delay(retry_number, None, random=lambda: 0.0) == 0.0
    assert policy.delay(retry_number, None, random=lambda: 0.5) == pytest.approx(ceiling / 2)
    assert policy.delay(retry_number, None, random=lambda: 0.999999) == pytest.approx(ceiling, rel=1e-5)


def test_backoff_with_the_real_random_spreads_over_the_whole_range() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=1.0)
    waits = [policy.delay(1, None) for _ in range(2000)]
    assert all(0.0 <= w <= 1.0 for w in waits)
    assert min(waits) < 0.05 and max(waits) > 0.95  # full jitter, not "half plus jitter"


def test_retry_after_is_honoured_with_at_most_ten_percent_jitter() -> None:
    policy = RetryPolicy()
    assert policy.delay(1, 2.0, random=lambda: 0.0) == 2.0
    assert policy.delay(3, 2.0, random=lambda: 0.999999) == pytest.approx(2.2, rel=1e-5)
    waits = [policy.delay(1, 2.0) for _ in range(500)]
    assert all(2.0 <= w <= 2.2 for w in waits)


def test_retry_after_is_capped_by_max_retry_after() -> None:
    policy = RetryPolicy(max_retry_after=5.0)
    assert policy.delay(1, 3600.0, random=lambda: 0.0) == 5.0
    assert policy.delay(1, 3600.0, random=lambda: 0.999999) <= 5.5


def test_a_zero_retry_after_means_at_once() -> None:
    assert RetryPolicy().delay(1, 0.0) == 0.0


def test_retry_numbers_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        RetryPolicy().delay(0, None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"max_retries": True},
        {"max_retries": "2"},
        {"base_delay": 0},
        {"base_delay": -1.0},
        {"max_delay": 0.0},
        {"max_retry_after": -1},
        {"max_delay": float("nan")},
        {"base_delay": "1"},
    ],
    ids=str,
)
def test_bad_policies_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)


def test_zero_retries_is_allowed_and_policies_are_frozen() -> None:
    policy = RetryPolicy(max_retries=0)
    with pytest.raises(AttributeError):
        policy.max_retries = 3  # type: ignore[misc]


# -- Attempts --------------------------------------------------------------------------


def test_a_first_attempt_that_succeeds() -> None:
    attempts = Attempts()
    assert attempts.count == 1 and attempts.retries == 0
    assert attempts.as_dict() == {"count": 1, "retries": 0, "statuses": [], "waits": [], "errors": []}


def test_attempts_record_statuses_waits_and_short_errors() -> None:
    attempts = Attempts()
    attempts.record_failure(ServerError("upstream", status_code=503))
    attempts.record_wait(0.5)
    attempts.record_failure(ConnectionResetError("Connection reset by peer " + "x" * 300))
    attempts.record_wait(1.25)
    attempts.record_failure(RateLimitError("slow down", status_code=429))
    assert attempts.count == 3 and attempts.retries == 2
    assert attempts.statuses == [503, None, 429]
    assert attempts.waits == [0.5, 1.25]
    assert attempts.errors[0] == "HTTP 503" and attempts.errors[2] == "HTTP 429"
    assert attempts.errors[1].startswith("ConnectionResetError: Connection reset by peer")
    assert len(attempts.errors[1]) == len("ConnectionResetError: ") + 100
    data = attempts.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["count"] == 3 and data["retries"] == 2 and data["statuses"] == [503, None, 429]


def test_as_dict_is_a_copy() -> None:
    attempts = Attempts()
    data = attempts.as_dict()
    data["statuses"].append(500)
    assert attempts.statuses == []
