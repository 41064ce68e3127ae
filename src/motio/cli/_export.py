"""``motio export``: a results file as a table, joined back onto its dataset.

The work is :func:`motio.data.export`'s (the join by id, the input order,
the added columns, memory that stays flat: see ``motio/data/_export.py``).
This module is the command around it: the paths checked before anything is
read, the library's refusals turned into one line and exit 2 (no
traceback), and a one-line report of what was written, on stderr.

The parsed fields become columns named from the answers themselves (in
order of first sight); ``--json-schema`` (the file given to ``motio run``)
orders them as the schema does and adds the fields no answer had, so that
a partial run's table has the same columns as the finished one's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .._exceptions import ConfigurationError
from ._args import ExportArgs
from ._errors import EXIT_OK, EXIT_USAGE, CliError

if TYPE_CHECKING:
    from ..data import ExportReport

__all__ = ["export_command"]


def export_command(args: ExportArgs) -> int:
    """Run ``motio export`` and return its exit status.

    Raises:
        CliError: a path that cannot be used, a file that is not what it
            should be, a target that is one of the inputs (all exit 2).
    """
    to = Path(args.to)
    _check_input(args.results, "results file")
    if args.join is not None:
        _check_input(args.join, "dataset (--join)")
    if args.json_schema is not None:
        _check_input(args.json_schema, "schema (--json-schema)")
    if not to.parent.is_dir():
        raise CliError(f"cannot write {args.to!r}: folder {str(to.parent)!r} not found", EXIT_USAGE)
    report = _export(args)
    print(_report_line(report, args), file=sys.stderr, flush=True)
    return EXIT_OK


def _check_input(path: str, what: str) -> None:
    if not Path(path).is_file():
        problem = "is not a file" if Path(path).exists() else "not found"
        raise CliError(f"{what} {path!r} {problem}", EXIT_USAGE)


def _export(args: ExportArgs) -> ExportReport:
    """:func:`motio.data.export`, its failures as one-line errors."""
    from ..data import export  # here: sqlite3 and the writers only for this command

    try:
        return export(
            args.results, args.to, args.join, id_column=args.id_column, schema=args.json_schema
        )
    except ConfigurationError as exc:  # MissingColumn included
        raise CliError(str(exc), EXIT_USAGE) from exc
    except OSError as exc:
        where = exc.filename if exc.filename is not None else args.to
        raise CliError(f"cannot export: {where}: {exc.strerror or exc}", EXIT_USAGE) from exc
    except ImportError as exc:
        needed = (exc.name or "pyarrow").partition(".")[0]
        raise CliError(f"{needed} is not installed: pip install 'motio[data]'", EXIT_USAGE) from exc
    except Exception as exc:
        if not _is_arrow_error(exc):
            raise
        # The results file is JSONL: a Parquet dataset is the one file pyarrow reads.
        read = args.join is not None and Path(args.join).suffix.lower() == ".parquet"
        where = f"cannot read {args.join}" if read else f"cannot write {args.to}"
        raise CliError(f"{where}: {exc}", EXIT_USAGE) from exc


def _is_arrow_error(exc: Exception) -> bool:
    # Looked up, not imported: pyarrow is loaded only when a Parquet file was touched.
    arrow = sys.modules.get("pyarrow")
    return arrow is not None and isinstance(exc, arrow.ArrowException)


def _report_line(report: ExportReport, args: ExportArgs) -> str:
    counts = f"{report.answered} answered, {report.failed} failed, {report.missing} missing"
    line = f"motio: wrote {report.rows} rows to {args.to}: {counts}"
    if report.skipped:
        line += f"; {report.skipped} input lines skipped (not a row)"
    if args.join is not None and report.rows and not (report.answered or report.failed):
        # Most often the ids differ: the run had --id-column and the export not, or the reverse.
        line += "\nmotio: no row has a result: give --id-column exactly as given to motio run"
    elif report.missing:
        line += " (no result yet: run motio run again to answer them, then export again)"
    return line
