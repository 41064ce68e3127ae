"""The prefix key and the servers' ranking: stable across processes, keyed on the shared start."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import motio.scheduling as scheduling
from motio.scheduling import KEY_CHARS, prefix_key, server_seed, weight

LONG_SYSTEM = " ".join(f"rule{i}" for i in range(1000))  # far more than KEY_CHARS
URLS = [f"http://gpu{i}:8000/v1" for i in range(4)]
PROMPTS: list[object] = [
    "a plain prompt",
    [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "question 1"}],
    [{"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "image_url"}]}],
]


def _ranking(key: int) -> list[str]:
    return sorted(URLS, key=lambda url: weight(key, server_seed(url)), reverse=True)


def test_the_exports_are_exactly_these() -> None:
    # The prefix routing's names (the package also holds hedging's and racing's).
    prefix = {"KEY_CHARS", "KEY_SLACK", "POOL_FACTOR", "PREFIX_HOLD", "PREFIX_SLACK", "SHARE_SLACK",
              "prefix_key", "server_seed", "weight"}  # fmt: skip
    assert prefix <= set(scheduling.__all__)
    assert all(hasattr(scheduling, name) for name in scheduling.__all__)


def test_keys_and_rankings_are_the_same_in_another_process() -> None:
    # Python's hash() is salted per process: a key from it would send a
    # prefix to a different server from each Ray worker.
    code = (
        "import json, sys\n"
        "from motio.scheduling import prefix_key, server_seed, weight\n"
        "prompts, urls = json.loads(sys.stdin.read())\n"
        "keys = [prefix_key(p) for p in prompts]\n"
        "ranks = [sorted(urls, key=lambda u: weight(k, server_seed(u)), reverse=True) for k in keys]\n"
        "print(json.dumps([keys, ranks]))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    proc = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps([PROMPTS, URLS]), capture_output=True,
        text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    keys, ranks = json.loads(proc.stdout)
    assert keys == [prefix_key(p) for p in PROMPTS]  # type: ignore[arg-type]
    assert ranks == [_ranking(k) for k in keys]


def test_a_long_system_prompt_is_the_key_whatever_the_question() -> None:
    def ask(question: str) -> int:
        return prefix_key([{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": question}])

    assert ask("first question") == ask("another one entirely")
    other = [{"role": "system", "content": "x" + LONG_SYSTEM}, {"role": "user", "content": "first question"}]
    assert prefix_key(other) != ask("first question")


def test_a_short_system_prompt_is_keyed_with_the_start_of_the_user_message() -> None:
    document = "chapter one " * 400  # a shared document, longer than the key's reach

    def ask(system: str, user: str) -> int:
        return prefix_key([{"role": "system", "content": system}, {"role": "user", "content": user}])

    assert ask("Be brief.", document + "Q1") == ask("Be brief.", document + "Q2")
    assert ask("Be brief.", "short question one") != ask("Be brief.", "short question two")
    assert ask("Be brief.", document) != ask("Be terse.", document)


def test_a_string_is_keyed_as_its_user_message_and_only_text_parts_count() -> None:
    assert prefix_key("hello") == prefix_key([{"role": "user", "content": "hello"}])
    assert prefix_key("y" * KEY_CHARS + "tail one") == prefix_key("y" * KEY_CHARS + "tail two")
    parts = [{"type": "text", "text": "hel"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "lo"}]
    assert prefix_key([{"role": "user", "content": parts}]) == prefix_key("hello")
    # Messages after the first non-system one never count.
    two = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]
    assert prefix_key(two) == prefix_key("hi")


def test_rankings_spread_keys_evenly_and_removing_a_server_moves_only_its_keys() -> None:
    firsts = [_ranking(prefix_key(f"group {g}"))[0] for g in range(4000)]
    counts = [firsts.count(url) for url in URLS]
    assert min(counts) > 800 and max(counts) < 1200  # 1000 each, give or take
    for g in range(200):
        ranking = _ranking(prefix_key(f"group {g}"))
        without = sorted(URLS[1:], key=lambda u: weight(prefix_key(f"group {g}"), server_seed(u)), reverse=True)
        assert without == [u for u in ranking if u != URLS[0]]  # the rest keep their order
