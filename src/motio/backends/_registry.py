"""Which backends there are: one table from a backend's name to its class.

Adding a backend is its module and one line here. Classes are named as
``"module:Class"`` strings and imported on first use, so the command can
offer the names (``--backend`` choices) and say what each is (``--help``)
without importing any backend.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .._exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._base import Backend

__all__ = ["DEFAULT_BACKEND", "SERVER_BACKEND", "backend_class", "backend_help", "backend_names"]

# name: ("module:Class", what it is, for --backend's help)
_CLASSES: dict[str, tuple[str, str]] = {
    "anthropic": ("motio.backends._anthropic:AnthropicBackend", "Anthropic's Messages API"),
    "llamacpp": ("motio.backends._llamacpp:LlamaCppBackend", "embedded model, offline"),
    "openai": ("motio.backends.openai:OpenAIBackend", "any OpenAI-compatible server"),
}

#: The backend of the command without ``--backend`` nor a server: offline.
DEFAULT_BACKEND = "llamacpp"
#: The backend ``--base-url`` (or ``--endpoints``) implies without ``--backend``.
SERVER_BACKEND = "openai"


def backend_names() -> tuple[str, ...]:
    """Every backend's name, sorted."""
    return tuple(sorted(_CLASSES))


def backend_help() -> str:
    """One line for ``--backend``'s help: each backend's name and what it is,
    the default and the one ``--base-url`` implies marked."""
    marks = {DEFAULT_BACKEND: " (default)", SERVER_BACKEND: " (implied by --base-url)"}
    # The default first, then the others in name order: the offline one leads.
    names = sorted(_CLASSES, key=lambda name: (name != DEFAULT_BACKEND, name))
    return "; ".join(f"{name}: {_CLASSES[name][1]}{marks.get(name, '')}" for name in names)


def backend_class(name: str) -> type[Backend]:
    """The class of the backend called ``name`` (its module imported now).

    Raises:
        ConfigurationError: no backend has that name.
    """
    try:
        where = _CLASSES[name][0]
    except KeyError:
        raise ConfigurationError(
            f"unknown backend kind {name!r}; choose one of: {', '.join(backend_names())}"
        ) from None
    module, _, attribute = where.partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module), attribute)
    return cls
