"""The batch engine: prompts files in, results files out, resumable.

One package owns what every way of running a batch needs, so that the
command (``motio run``), the Python API and distributed workers share it
rather than reach into each other:

- :mod:`._records`: the prompts file (motio's lines or OpenAI Batch
  request lines), parsed lazily, one line at a time;
- :mod:`._results`: the append-only, crash-safe, resumable results file
  (or a stream, for ``-o -``);
- :mod:`._formats`: the two shapes of result line, built and recognised;
- :mod:`._engine`: records through one backend at a fixed concurrency;
- :mod:`._runner`: the ``Runner`` protocol the engine and Ray's pool share;
- :mod:`._job`: ``BatchJob``, the batch the command and :func:`run` both
  run (results file, what is done, which runner, shared limits);
- :mod:`._stats`: counters and the end summary;
- :mod:`._api`: :func:`run` / :func:`arun`, the batch from Python;
- :mod:`._ray`, :mod:`._share`: the batch on Ray workers, limits shared
  across them (Ray is imported only when asked for).

Importing it imports no backend and no third-party package.
"""

from ._api import arun, run
from ._engine import BatchAborted, Engine, batch_options, build_result
from ._formats import ResultLine, batch_line, own_view, result_outcome
from ._records import (
    InputProblem,
    MixedFormats,
    PromptFormat,
    PromptRecord,
    default_id,
    id_key,
    parse_line,
    scan_lines,
    scan_prompts,
)
from ._results import (
    NotAResultsFile,
    ResultsFile,
    ResultsFileLocked,
    ResultsStream,
    ResumeState,
    inspect_results,
)
from ._stats import RunStats, format_summary, percentile

__all__ = [
    "BatchAborted",
    "Engine",
    "InputProblem",
    "MixedFormats",
    "NotAResultsFile",
    "PromptFormat",
    "PromptRecord",
    "ResultLine",
    "ResultsFile",
    "ResultsFileLocked",
    "ResultsStream",
    "ResumeState",
    "RunStats",
    "arun",
    "batch_line",
    "batch_options",
    "build_result",
    "default_id",
    "format_summary",
    "id_key",
    "inspect_results",
    "own_view",
    "parse_line",
    "percentile",
    "result_outcome",
    "run",
    "scan_lines",
    "scan_prompts",
]
