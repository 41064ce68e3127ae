"""Exit statuses of the ``motio`` command and the error that carries one."""

from __future__ import annotations

__all__ = [
    "EXIT_BACKEND",
    "EXIT_FAILURES",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "CliError",
]

EXIT_OK = 0
#: Some prompts failed or some input lines were bad; everything else ran.
EXIT_FAILURES = 1
#: The command line or an input/output path is unusable (argparse uses 2 too).
EXIT_USAGE = 2
#: The backend cannot be reached, refuses the API key, or lacks the model.
EXIT_BACKEND = 3
#: Stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130
#: Stopped by SIGTERM, taken as Ctrl-C (128 + SIGTERM).
EXIT_TERMINATED = 143


class CliError(Exception):
    """A failure reported as one line ``motio: error: ...``, without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURES) -> None:
        super().__init__(message)
        self.exit_code = exit_code
