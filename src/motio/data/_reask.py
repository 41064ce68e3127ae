"""One prompt's answers checked against the schema, re-asked up to a bound.

:class:`AnswerCheck` is the per-prompt state of ``--max-invalid``, kept
apart from how answers are obtained, so the batch engine (or anything
else) drives it from its own loop::

    check = AnswerCheck(schema, messages, max_invalid=2)
    while True:
        answer = await generate(check.messages)   # however it is sent
        parsed = check.check(answer)              # raises InvalidOutput at the bound
        if parsed is not None:
            break

With ``reask=True`` (the default) the next request is the conversation with
the invalid answer and the reason appended (:meth:`OutputSchema.reask`);
with ``reask=False`` the same messages are sent again (a fresh sample, which
needs ``temperature`` > 0 to differ).
"""

from __future__ import annotations

from typing import Any

from .._exceptions import InvalidOutput
from ._schema import Invalid, OutputSchema, Parsed

__all__ = ["DEFAULT_MAX_INVALID", "AnswerCheck"]

DEFAULT_MAX_INVALID = 2  # --max-invalid's default: re-asks after the first invalid answer


class AnswerCheck:
    """The answers to one prompt, checked one after another.

    Args:
        schema: what every answer must match.
        messages: the prompt's messages (not changed).
        max_invalid: how many invalid answers are asked again; the next
            invalid one raises :class:`~motio.InvalidOutput`.
        reask: append the invalid answer and why to the next request.

    Attributes:
        messages: what to send next.
        invalid: how many invalid answers so far (each one re-asked, bar the
            last when the bound is reached): the summary's count.
        attempts: how many answers were checked.
    """

    def __init__(
        self,
        schema: OutputSchema,
        messages: list[dict[str, Any]],
        *,
        max_invalid: int = DEFAULT_MAX_INVALID,
        reask: bool = True,
    ) -> None:
        if max_invalid < 0:
            raise ValueError(f"max_invalid must be >= 0, got {max_invalid}")
        self.schema = schema
        self.messages = messages
        self.invalid = 0
        self.attempts = 0
        self._first = messages
        self._max_invalid = max_invalid
        self._reask = reask

    @property
    def reasks(self) -> int:
        """How many times the prompt was asked again."""
        return max(0, self.attempts - 1)

    def check(self, answer: str) -> Parsed | None:
        """The parsed answer, or None when it is invalid and must be asked again
        (then :attr:`messages` is what to send).

        Raises:
            InvalidOutput: the answer is invalid and ``max_invalid`` re-asks were spent.
        """
        self.attempts += 1
        result = self.schema.validate(answer)
        if isinstance(result, Parsed):
            return result
        self._invalid(answer, result)
        return None

    def _invalid(self, answer: str, result: Invalid) -> None:
        self.invalid += 1
        if self.invalid > self._max_invalid:
            raise InvalidOutput(answer, result.message, attempts=self.attempts)
        if self._reask:
            # From the first messages each time: only the last wrong answer is
            # shown, so the conversation does not grow with every re-ask.
            self.messages = self.schema.reask(self._first, answer, result.message)
