"""The two shapes of result line, built and recognised in one place.

A results file holds the shape of its prompts file:

- motio's own: ``{"id", "output", "finish_reason", "usage", ...,
  "error"}`` (``tool_calls`` and ``logprobs`` too when the server sent them);
- the OpenAI Batch API's output line: ``{"id", "custom_id", "response":
  {"status_code", "request_id", "body"}, "error"}``, where ``body`` is the
  ``chat.completion`` the server would have returned without streaming and
  ``error`` is ``{"code", "message"}`` or null. Only a request that took
  more than one run (its stream broke mid-answer and the batch ran it
  again) gets one more top-level key, ``attempts``; every other line keeps
  the Batch API's four keys exactly.

Resume reads the id (``id`` or ``custom_id``) and whether the line succeeded
from either shape, so ``--retry-errors`` and "skip what is done" behave the
same for both.
"""

from __future__ import annotations

import uuid
from typing import Any

from ._records import MOTIO, OPENAI_BATCH, id_key

__all__ = ["ResultLine", "batch_line", "own_view", "result_outcome"]


class ResultLine(dict[str, Any]):
    """A result line as written, which also carries motio's own result for it.

    The Batch API's line has no room for latency, time to first token or
    retries, but the run's progress and summary need them: they travel on
    ``own`` (motio's own result dict) and never reach the file, since only
    the dict's items are written. It pickles with ``own`` (Ray workers).
    """

    own: dict[str, Any]


def own_view(line: dict[str, Any]) -> dict[str, Any]:
    """motio's own result for a line of either shape (for counters and messages)."""
    own = getattr(line, "own", None)
    return own if own is not None else line


def batch_line(
    custom_id: str | int,
    own: dict[str, Any],
    response: dict[str, Any] | None,
    error: Any,
    request_id: str | None = None,
) -> ResultLine:
    """The Batch API's output line for one request.

    Args:
        custom_id: the request line's ``custom_id``.
        own: motio's own result line for it (kept on ``.own``).
        response: the assembled ``chat.completion`` (None on failure).
        error: the exception the request failed with, or None.
        request_id: the server's id for the request (``x-request-id``);
            without one, the completion's ``id``.
    """
    line = ResultLine(id=f"batch_req_{uuid.uuid4().hex}", custom_id=custom_id, response=None, error=None)
    line.own = own
    runs = own.get("attempts", 1)
    if runs > 1:
        line["attempts"] = runs
    if error is None:
        body = response or {}
        line["response"] = {"status_code": 200, "request_id": request_id or body.get("id"), "body": body}
        return line
    code, message = type(error).__name__, str(error)
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        # The server answered with an error status: its place is the response, as in the Batch API.
        failure = {"message": message, "type": code, "param": None, "code": status}
        line["response"] = {"status_code": status, "request_id": request_id, "body": {"error": failure}}
    line["error"] = {"code": code, "message": message}
    return line


def result_outcome(obj: Any) -> tuple[str, bool, str] | None:
    """``(id key, succeeded, format)`` of a result line of either shape; None if neither.

    A Batch line succeeded when its ``error`` is null and its response's
    status is below 400.
    """
    if not isinstance(obj, dict) or "error" not in obj:
        return None
    if "custom_id" in obj and "response" in obj:
        response = obj["response"]
        status = response.get("status_code") if isinstance(response, dict) else None
        ok = obj["error"] is None and isinstance(status, int) and status < 400
        return id_key(obj["custom_id"]), ok, OPENAI_BATCH
    if "id" in obj and "output" in obj:
        return id_key(obj["id"]), obj["error"] is None, MOTIO
    return None
