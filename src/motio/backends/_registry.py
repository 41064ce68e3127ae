"""Which backends there are: one table from a backend's name to its class.

Adding a backend is its module and one line here. Classes are named as
``"module:Class"`` strings and imported on first use, so the command can
offer the names (``--backend`` choices) without importing any backend.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .._exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._base import Backend

__all__ = ["DEFAULT_BACKEND", "SERVER_BACKEND", "backend_class", "backend_names"]

_CLASSES: dict[str, str] = {
    "anthropic": "motio.backends._anthropic:AnthropicBackend",
    "llamacpp": "motio.backends._llamacpp:LlamaCppBackend",
    "openai": "motio.backends.openai:OpenAIBackend",
}

#: The backend of the command without ``--backend`` nor a server: offline.
DEFAULT_BACKEND = "llamacpp"
#: The backend ``--base-url`` (or ``--endpoints``) implies without ``--backend``.
SERVER_BACKEND = "openai"


def backend_names() -> tuple[str, ...]:
    """Every backend's name, sorted."""
    return tuple(sorted(_CLASSES))


def backend_class(name: str) -> type[Backend]:
    """The class of the backend called ``name`` (its module imported now).

    Raises:
        ConfigurationError: no backend has that name.
    """
    try:
        where = _CLASSES[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown backend kind {name!r}; choose one of: {', '.join(backend_names())}"
        ) from None
    module, _, attribute = where.partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module), attribute)
    return cls
