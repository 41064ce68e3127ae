"""``motio chat``: one prompt, the answer streamed to stdout as it arrives."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, TextIO

from .._exceptions import MotioError
from ._args import ChatArgs
from ._backend import BackendSpec, generation_options, one_line, open_backend
from ._errors import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, CliError
from ._signals import stop_status

__all__ = ["chat_command"]


def chat_command(args: ChatArgs) -> int:
    """Run ``motio chat`` and return its exit status.

    Raises:
        CliError: an empty prompt, a failing backend or a failed generation.
    """
    messages = _messages(args.system, _read_prompt(args.prompt))
    spec = BackendSpec.from_args(args.backend)
    options = generation_options(args.generation)
    try:
        asyncio.run(_chat(spec, messages, options, sys.stdout))
    except KeyboardInterrupt:
        return stop_status()[1]  # 130, or 143 after a SIGTERM
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILURES
    return EXIT_OK


def _read_prompt(prompt: str) -> str:
    # `echo ... | motio chat -` ends the text with a newline the user never meant.
    text = sys.stdin.read().rstrip("\r\n") if prompt == "-" else prompt
    if not text.strip():
        source = "stdin" if prompt == "-" else "the prompt"
        raise CliError(f"{source} is empty; give a prompt to answer", EXIT_USAGE)
    return text


def _messages(system: str | None, prompt: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return messages


async def _chat(
    spec: BackendSpec, messages: list[dict[str, str]], options: dict[str, Any], out: TextIO
) -> None:
    backend = await open_backend(spec)
    try:
        mot = await backend.generate(messages, stream=True, **options)
        try:
            await _stream(mot, out)
        finally:
            await mot.aclose()
    except MotioError as exc:
        raise CliError(one_line(exc), EXIT_FAILURES) from exc
    finally:
        await backend.aclose()


async def _stream(mot: Any, out: TextIO) -> None:
    ended = True  # nothing written yet, so no line to end
    try:
        async for delta in mot:
            if delta:
                out.write(delta)
                out.flush()
                ended = delta.endswith("\n")
    finally:
        # Also on Ctrl-C or an error: the shell prompt gets a line of its own.
        if not ended:
            out.write("\n")
            out.flush()


def _silence_stdout() -> None:
    # The reader went away (``motio chat ... | head``); point stdout at
    # /dev/null so the interpreter's final flush does not raise again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
