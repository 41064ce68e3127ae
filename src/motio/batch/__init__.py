"""The batch engine: prompts files in, results files out, resumable.

One package owns what every way of running a batch needs, so that the
command (``motio run``), the Python API and distributed workers share it
rather than reach into each other:

- :mod:`._records`: the prompts file, parsed lazily, one line at a time;
- :mod:`._results`: the append-only, crash-safe, resumable results file;
- :mod:`._engine`: records through one backend at a fixed concurrency;
- :mod:`._stats`: counters and the end summary;
- :mod:`._api`: :func:`run` / :func:`arun`, the batch from Python;
- :mod:`._ray`, :mod:`._share`: the batch on Ray workers, limits shared
  across them (Ray is imported only when asked for).

Importing it imports no backend and no third-party package.
"""

from ._api import arun, run
from ._engine import BatchAborted, Engine, build_result
from ._records import InputProblem, PromptRecord, default_id, id_key, parse_line, scan_prompts
from ._results import NotAResultsFile, ResultsFile, ResultsFileLocked, ResumeState, inspect_results
from ._stats import RunStats, format_summary, percentile

__all__ = [
    "BatchAborted",
    "Engine",
    "InputProblem",
    "NotAResultsFile",
    "PromptRecord",
    "ResultsFile",
    "ResultsFileLocked",
    "ResumeState",
    "RunStats",
    "arun",
    "build_result",
    "default_id",
    "format_summary",
    "id_key",
    "inspect_results",
    "parse_line",
    "percentile",
    "run",
    "scan_prompts",
]
