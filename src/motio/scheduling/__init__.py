"""Scheduling shared by the backends and the batch engine.

It imports nothing from ``motio.backends`` or ``motio.batch``: both import it.

- ``_prefix``: a prompt's prefix key (``prefix_key``) and the servers' ranks
  for a key (``server_seed``, ``weight``: rendezvous hashing), for
  prefix-aware routing over several servers.
"""

from ._prefix import (
    KEY_CHARS, KEY_SLACK, POOL_FACTOR, PREFIX_HOLD, PREFIX_SLACK, SHARE_SLACK,
    prefix_key, server_seed, weight,
)  # fmt: skip

__all__ = [
    "KEY_CHARS", "KEY_SLACK", "POOL_FACTOR", "PREFIX_HOLD", "PREFIX_SLACK", "SHARE_SLACK",
    "prefix_key", "server_seed", "weight",
]  # fmt: skip
