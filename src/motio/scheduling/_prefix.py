"""A prompt's prefix key, and each server's rank for a key (rendezvous hashing).

A server with a prefix cache (vLLM's automatic prefix caching, SGLang's
RadixAttention, llama.cpp's ``--cache``) prefills a prompt whose long start
it has seen recently for almost nothing. Prompts that share a start (a
system prompt, few-shot examples, a document asked several questions) are
therefore worth sending to one server, and the key names that start:

- **The key** is a 64-bit BLAKE2b digest of the first ``KEY_CHARS``
  characters of the prompt's leading text: its system (or developer)
  messages, then the first other message, joined by a separator. A system
  prompt longer than ``KEY_CHARS`` is the key alone (the question after it
  is not); a short one is keyed with the start of the first user message,
  where a shared document usually is. A plain prompt string is keyed as the
  one user message it becomes. BLAKE2b, not Python's ``hash``: that is
  salted per process, and every Ray worker must find the same key.
- **The ranking** is rendezvous (highest random weight) hashing: each server
  has a seed from its base URL, a key's weight on a server mixes the two
  (SplitMix64's finaliser), and the key prefers servers by falling weight.
  Every process that knows the same URLs ranks them alike; removing a
  server moves only the keys it held, each to its next choice.

The router (``backends/http/_endpoints.py``) takes the key's first choice
unless that server is more than a slack above the least loaded
("Consistent Hashing with Bounded Loads", Mirrokni, Thorup and
Zadimoghaddam, 2018), then the next within the slack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Any

__all__ = [
    "KEY_CHARS", "KEY_SLACK", "POOL_FACTOR", "PREFIX_HOLD", "PREFIX_SLACK", "SHARE_SLACK",
    "prefix_key", "server_seed", "weight",
]  # fmt: skip

#: Characters of a prompt's leading text that make its key: about 500
#: tokens, past any chat template's preamble and into what a group shares.
KEY_CHARS = 2048
#: How far above the least pressed server (in requests per slot, waiting
#: ones included) a prefix's own server may be and still get it: half a
#: server's slots of queue before its prefixes spill to their next choice.
PREFIX_SLACK = 1.0
#: How many more prefixes than the mean a server may be the home of
#: (0.15: 15% more), as in "Consistent Hashing with Bounded Loads" with
#: prefixes as the balls: a new prefix goes to its first choice unless
#: that one is full, then to the next.
KEY_SLACK = 0.15
#: How many more prompts than the mean a server may take by prefix key
#: (0.075: 7.5% more) before its prefixes' next prompts go to their next choice.
SHARE_SLACK = 0.075
#: Prompts a batch keeps in flight per slot when routing by prefix: the
#: waiting ones are what lets room freed on a server go to a prompt whose
#: prefix that server holds (with exactly as many as slots, each prompt
#: would take whatever slot freed).
POOL_FACTOR = 2
#: Seconds at most that a prompt waits for the first prompt of its prefix
#: on the same server to reach that server's prefix cache (its first token:
#: the prefill is done, the blocks are cached). Admitted together, a
#: group's prompts would all miss the cache and each prefill the prefix.
PREFIX_HOLD = 3.0
_MASK = (1 << 64) - 1
_LEADING_ROLES = ("system", "developer")
# Between two messages' texts, so that "ab" + "c" and "a" + "bc" differ.
_SEPARATOR = "\x1e"


def prefix_key(prompt: str | Sequence[Mapping[str, Any]]) -> int:
    """The prefix key of a prompt (a string or chat messages): a 64-bit int,
    the same in every process."""
    text = prompt[:KEY_CHARS] if isinstance(prompt, str) else _leading_text(prompt)
    digest = blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _leading_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The system messages' text and the first other message's, up to ``KEY_CHARS``."""
    parts: list[str] = []
    size = 0
    for message in messages:
        text = _text_of(message.get("content"))
        parts.append(text)
        size += len(text) + 1
        if size >= KEY_CHARS or message.get("role") not in _LEADING_ROLES:
            break
    return _SEPARATOR.join(parts)[:KEY_CHARS]


def _text_of(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def server_seed(base_url: str) -> int:
    """A server's seed for ranking, from its base URL (the same in every process)."""
    return int.from_bytes(blake2b(base_url.encode("utf-8"), digest_size=8).digest(), "little")


def weight(key: int, seed: int) -> int:
    """A key's weight on a server (its seed): SplitMix64's finaliser of the
    two mixed, so that every bit of each moves every bit of the result."""
    z = (key ^ seed) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)
