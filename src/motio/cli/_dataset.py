"""``motio run DATA --template ...``: a dataset's rows as the run's prompts.

When the input is a dataset: with ``--template`` or ``--template-file``,
always (``.parquet``, ``.csv``, ``.tsv``, ``.jsonl``/``.ndjson``: any
columns). Without a template, a ``.jsonl`` is read as prompt lines, as it
always was (``{"id", "prompt" | "messages"}``), and a ``.parquet``,
``.csv`` or ``.tsv`` is a usage error that says a template is needed:
there is no column to guess the prompt from. ``--system`` and
``--id-column`` belong to datasets and are refused without a template.

Everything after the records (the planning pass, resume by id, results,
the summary, Ray) is ``motio run``'s own: a row is a
:class:`~motio.batch.PromptRecord` whose id is its ``--id-column`` value or
``line-N`` (its row number), stable from one run to the next as long as
the rows stay in their order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .._exceptions import ConfigurationError, MissingColumn
from ..batch import InputProblem, PromptRecord
from ._args import DatasetArgs
from ._errors import EXIT_USAGE, CliError

if TYPE_CHECKING:
    from ..data import Template

__all__ = ["DatasetSource", "dataset_source"]

# Files that are only ever datasets: without a template they cannot be prompts.
_ONLY_DATASETS = (".parquet", ".csv", ".tsv")


class DatasetSource:
    """A dataset file and how its rows become prompts; read afresh by each pass of the run."""

    def __init__(self, path: Path, template: Template, id_column: str | None) -> None:
        self.path, self.template, self.id_column = path, template, id_column

    def records(self) -> Iterator[PromptRecord | InputProblem]:
        """The rows as records, streamed.

        Raises:
            CliError: (exit 2) a column the template or ``--id-column`` names
                is missing (nothing was sent), pyarrow is missing for a
                Parquet file, or the file cannot be read as its suffix says.
        """
        from ..batch._dataset import open_dataset

        try:
            rows, records = open_dataset(self.path, self.template, id_column=self.id_column)
            with rows:
                yield from records
        except MissingColumn as exc:
            raise CliError(f"{self.path}: {exc}", EXIT_USAGE) from exc
        except ConfigurationError as exc:
            raise CliError(str(exc), EXIT_USAGE) from exc
        except ImportError as exc:
            raise CliError(
                f"{self.path}: reading Parquet needs pyarrow ({exc}): pip install 'motio[data]'", EXIT_USAGE
            ) from exc


def dataset_source(args: DatasetArgs, prompts: Path | None) -> DatasetSource | None:
    """The dataset to read, or None for prompt lines (see the module docstring for the rule).

    Raises:
        CliError: (exit 2) dataset flags without a template, a dataset file
            without one, a dataset on stdin, or a template that is not valid
            or cannot be read.
    """
    if not args.given:
        _check_prompt_lines(args, prompts)
        return None
    if prompts is None:
        raise CliError("a dataset is read from a file: give its path rather than - (stdin)", EXIT_USAGE)
    return DatasetSource(prompts, _template(args), args.id_column)


def _check_prompt_lines(args: DatasetArgs, prompts: Path | None) -> None:
    flags = [name for name, value in (("--system", args.system), ("--id-column", args.id_column)) if value]
    if flags:
        raise CliError(
            f"{' and '.join(flags)} apply to a dataset: give --template or --template-file "
            "(prompt lines carry their own messages and ids)",
            EXIT_USAGE,
        )
    if prompts is not None and prompts.suffix.lower() in _ONLY_DATASETS:
        raise CliError(
            f"{prompts} is a dataset: give --template 'TEXT {{column}}' (or --template-file PATH) "
            "to say how a row becomes a prompt",
            EXIT_USAGE,
        )


def _template(args: DatasetArgs) -> Template:
    # Here: a run of prompt lines never loads motio.data.
    from ..data import Template

    try:
        if args.template_file is not None:
            return Template.from_file(args.template_file, system=args.system)
        assert args.template is not None
        return Template(args.template, system=args.system)
    except ConfigurationError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    except OSError as exc:
        raise CliError(f"cannot read the template file {args.template_file!r}: {exc.strerror}", EXIT_USAGE) from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"the template file {args.template_file!r} is not UTF-8 text", EXIT_USAGE) from exc
