"""The command line as typed values: what ``_main`` parses argv into, once.

Everything below ``_main`` reads these frozen dataclasses, never argparse's
namespace: a flag's name and type are written once (here), and a command
cannot ask for a flag it does not have. Values are as given (``None`` when
a flag was not); checking and resolving them (the backend's registry,
files, the environment) is each command's, in its own order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["AnswerArgs", "BackendArgs", "ChatArgs", "DatasetArgs", "ExportArgs", "GenerationArgs", "RunArgs"]


@dataclass(frozen=True, slots=True)
class BackendArgs:
    """The backend group's flags (and ``--concurrency``), resolved by ``BackendSpec.from_args``.

    ``base_urls``: every ``--base-url``, in order; ``concurrency``: None
    when not given (and always for ``motio chat``, which has no such flag);
    ``prefix_routing``: False with ``--no-prefix-routing``.
    ``metrics_urls``: every ``--metrics-url``, in order; ``no_metrics``:
    ``--no-metrics`` (``motio run``'s only).
    """

    backend: str | None = None
    model: str | None = None
    base_urls: tuple[str, ...] = ()
    endpoints: str | None = None
    api_key_env: str | None = None
    ca_bundle: str | None = None
    concurrency: int | str | None = None
    max_retries: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    first_token_timeout: float | None = None
    total_timeout: float | None = None
    metrics_urls: tuple[str, ...] = ()
    no_metrics: bool = False
    prefix_routing: bool = True


@dataclass(frozen=True, slots=True)
class GenerationArgs:
    """The generation group's flags (``--extra-body`` is ``motio run``'s only)."""

    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    chunk_timeout: float | None = None
    extra_body: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class DatasetArgs:
    """``motio run``'s dataset group: how a row becomes a prompt (``cli/_dataset.py``).

    ``template``: ``--template``'s text; ``template_file``: ``--template-file``'s
    path (at most one of them is given; with either, the input is a dataset).
    """

    template: str | None = None
    template_file: str | None = None
    system: str | None = None
    id_column: str | None = None

    @property
    def given(self) -> bool:
        """Whether the input is to be read as a dataset (a template was given)."""
        return self.template is not None or self.template_file is not None


@dataclass(frozen=True, slots=True)
class AnswerArgs:
    """``motio run``'s structured-output and cache flags.

    ``json_schema``: ``--json-schema``'s file; ``max_invalid``: None when
    not given; ``reask_feedback``: False with ``--no-reask-feedback``;
    ``cache``: ``--cache``'s path, ``""`` for ``--cache`` alone (the
    default location), None without it.
    """

    json_schema: str | None = None
    max_invalid: int | None = None
    reask_feedback: bool = True
    cache: str | None = None


@dataclass(frozen=True, slots=True)
class RunArgs:
    """``motio run``.

    ``ray``: the cluster's address (``"local"`` for ``--ray`` alone), None
    without ``--ray``; ``ray_workers``: ``--workers`` (Ray workers), None
    when not given; ``hedge_budget``: ``--hedge-budget`` (None: not given).
    """

    prompts: str
    output: str
    backend: BackendArgs
    generation: GenerationArgs
    retry_errors: bool = False
    quiet: bool = False
    ray: str | None = None
    ray_workers: int | None = None
    dataset: DatasetArgs = DatasetArgs()
    answers: AnswerArgs = AnswerArgs()
    hedge_budget: float | None = None


@dataclass(frozen=True, slots=True)
class ChatArgs:
    """``motio chat``."""

    prompt: str
    backend: BackendArgs
    generation: GenerationArgs
    system: str | None = None


@dataclass(frozen=True, slots=True)
class ExportArgs:
    """``motio export``.

    ``results``: the results file; ``to``: the table to write (its suffix
    picks the format); ``join``: the dataset the run read, None for the
    results alone; ``id_column``: the dataset's id column, as given to
    ``motio run`` (None: ``line-N``); ``json_schema``: the schema file, to
    name the parsed columns in its order (None: from the answers).
    """

    results: str
    to: str
    join: str | None = None
    id_column: str | None = None
    json_schema: str | None = None
