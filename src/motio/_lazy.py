"""Public names of a package, imported on first use (PEP 562).

``motio`` and ``motio.backends`` both name their exports up front but load
each only when touched, so ``import motio`` (and ``motio --help``, which
reads the backends' registry) pays for no backend. One lookup serves both.
"""

from __future__ import annotations

import importlib

# Not `from typing import ...`: typing alone costs several ms at import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict[str, Any], where: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` for names loaded lazily.

    Args:
        namespace: the package's ``globals()`` (its ``__name__`` and ``__all__`` included).
        where: each lazy name's module, relative to the package (``"._thunk"``).

    Returns:
        ``(__getattr__, __dir__)``: the first imports a name's module once and
        stores the value in ``namespace``, so later lookups skip it.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> object:  # noqa: N807 (the module hook's own name)
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(namespace) | set(namespace["__all__"]))

    return __getattr__, __dir__
