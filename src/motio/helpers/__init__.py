"""Documented helper modules (``motio.helpers.async_helpers``)."""

__all__: list[str] = []
