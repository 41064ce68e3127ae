"""IdSet (ids as 8-byte digests) and Quantiles (percentiles in a sketch): what a batch keeps per prompt."""

from __future__ import annotations

import random
import sys

import pytest

from motio.batch._ids import IdSet, digest
from motio.batch._records import id_key
from motio.batch._sketch import EXACT_UP_TO, Quantiles
from motio.batch._stats import percentile


def test_an_id_set_behaves_as_a_set_of_keys() -> None:
    keys = [id_key(v) for v in ("a", 1, "1", "ü", "\ud800", "line-3")]
    ids = IdSet(keys)
    assert len(ids) == 6 and all(key in ids for key in keys)
    assert '"b"' not in ids and 1 not in ids  # type: ignore[comparison-overlap]
    assert ids == set(keys) and ids != set(keys[:-1])
    ids.discard('"a"')
    ids.discard('"never there"')
    assert '"a"' not in ids and len(ids) == 5
    ids.add('"a"')
    assert '"a"' in ids and len(ids) == 6
    assert ({'"a"', '"z"'} & ids) == {'"a"'}
    both = ids & IdSet(['"a"', "1", '"z"'])
    assert both == {'"a"', "1"}
    ids -= both
    assert ids == set(keys) - {'"a"', "1"}
    copied = ids.copy()
    copied.add('"new"')
    assert '"new"' not in ids and len(copied) == len(ids) + 1


def test_first_line_is_kept_and_survives_growth_and_removals() -> None:
    ids = IdSet(lines=True)
    for i in range(50_000):
        assert ids.first_line(f"k{i}", i + 1) == i + 1
    for i in range(0, 50_000, 2):
        ids.discard(f"k{i}")
    assert len(ids) == 25_000
    assert all(ids.first_line(f"k{i}", 0) == i + 1 for i in range(1, 50_000, 2))
    assert ids.first_line("k0", 7) == 7  # removed, so new again


def test_an_id_costs_bytes_not_an_object() -> None:
    ids = IdSet(f"key-{i}" for i in range(100_000))
    # 8 bytes a slot, at most two thirds full, doubled at most once too far.
    assert sys.getsizeof(ids._keys) < 100_000 * 8 * 3 * 1.1
    assert digest("x") > 1 and digest("x") == digest("x") != digest("y")


def test_quantiles_are_exact_while_small_like_the_list_they_replace() -> None:
    values = [random.uniform(1, 1000) for _ in range(EXACT_UP_TO)]
    sketch = Quantiles()
    for value in values:
        sketch.append(value)
    assert sketch.exact and len(sketch) == EXACT_UP_TO and sketch == values and list(sketch) == values
    for q in (0, 50, 95, 100):
        assert sketch.percentile(q) == percentile(values, q) == percentile(sketch, q)
    assert Quantiles().percentile(50) is None and not Quantiles()
    with pytest.raises(ValueError, match="0..100"):
        sketch.percentile(101)


def test_quantiles_past_the_exact_size_stay_within_one_percent_in_little_memory() -> None:
    rng = random.Random(18)
    values = [rng.lognormvariate(4, 1.2) for _ in range(200_000)] + [0.0] * 100
    sketch = Quantiles()
    for value in values:
        sketch.append(value)
    assert not sketch.exact and len(sketch) == len(values)
    ordered = sorted(values)
    for q in (1, 25, 50, 90, 95, 99, 99.9):
        # Within 1% of the value at that rank (DDSketch's guarantee), and so of the
        # interpolated percentile wherever the values are not sparse.
        at_rank = ordered[int((len(values) - 1) * q / 100)]
        assert sketch.percentile(q) == pytest.approx(at_rank, rel=0.0101)
        if q <= 95:
            assert sketch.percentile(q) == pytest.approx(percentile(values, q), rel=0.011)
    assert sketch.percentile(0) == 0.0
    assert len(sketch._buckets) < 1500
    with pytest.raises(RuntimeError, match="percentiles"):
        list(sketch)
