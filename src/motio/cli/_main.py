"""Argument parsing and dispatch for the ``motio`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from ._args import AnswerArgs, BackendArgs, ChatArgs, DatasetArgs, ExportArgs, GenerationArgs, RunArgs
from ._errors import EXIT_USAGE, CliError

__all__ = ["build_parser", "main", "parse_args"]

_DESCRIPTION = """\
Concurrent LLM generation from the command line.

Without --backend or --base-url, motio runs the embedded SmolLM2-135M model
with llama.cpp, offline. Give --base-url for any OpenAI-compatible server
(OpenAI, vLLM, llama.cpp server, Ollama's /v1, LM Studio, TGI)."""

_RUN_EPILOG = """\
input lines:
  {"id": "q1", "prompt": "Why is the sky blue?"}
  {"id": "q2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64}
  "id" defaults to "line-N" (N the line number), which never collides with
  an integer id; an explicit "line-N" on another line is a duplicate (the
  later line is reported and skipped). Edited between runs, a file keeps its
  explicit ids, but default ids follow the line numbers (inserting a line
  shifts them): give explicit ids if the file may change. Any other
  chat-completions field of a line (response_format, tools, stop, top_p,
  logprobs...) is forwarded; other keys are ignored.

output lines (one per prompt, written as each finishes):
  id, output, finish_reason, usage, ttfb_ms, queued_ms, latency_ms, model, retries,
  error (and partial_output when a stream broke after some text; tool_calls,
  logprobs when the server returned them; parsed and reasks with --json-schema;
  "cached": true on an answer from --cache)

OpenAI Batch files (the format vLLM's run_batch reads too):
  {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
   "body": {"model": "m", "messages": [...], "response_format": {...}}}
  body is sent as written (every field; only stream/stream_options are
  motio's); command-line options fill only what it leaves out. Output lines
  follow the Batch API: {"id", "custom_id", "response": {"status_code",
  "request_id", "body"}, "error"}, body being the chat.completion the server
  would have returned without streaming. A file holds one format (a mixed
  file is refused, naming the line); other urls are reported per line.

datasets (--template or --template-file; pip install 'motio[data]' for Parquet):
  motio run reviews.parquet -o out.jsonl --template 'Classify the sentiment of: {text}'
  .parquet, .csv, .tsv or .jsonl rows, any columns, streamed; {column} is
  Python str.format (a missing column is exit 2 before anything is sent).
  Ids: --id-column COL, or "line-N" from the row's number (stable while the
  rows keep their order; resume goes by them). Without a template a .jsonl
  is prompt lines and a .parquet/.csv/.tsv is refused.

pipes:
  motio run - -o - ... reads prompts from stdin (once, as they come) and
  writes results to stdout (flushed per line; then no lock and no resume:
  --retry-errors is refused). Progress and summary stay on stderr.

Running the same command again resumes: ids with a successful result in
OUT are skipped; prompts never answered (not reached, or in flight when a
run stopped: Ctrl-C, SIGTERM, kill, a server gone, a key refused) run
again; failed ones only with --retry-errors. A run stopped by a whole-run failure records
only what was answered. OUT must be motio's own results file (every line a
result): any other file, or the prompts file by any name, is refused and
left untouched. OUT is created only once the backend answered.

several servers (--base-url more than once, or --endpoints FILE):
  prompts that share a start (system prompt, start of the first message) go
  to the same server, unless it has half its limit more in flight and
  waiting than the least loaded, and are sent grouped (read a few times the
  concurrency ahead), so that each server's prefix cache serves them;
  --no-prefix-routing sends each request to the server with the fewest in
  flight for its limit, in file order (--concurrency is per server); a request that failed before any content
  goes to another server; a server that stops answering leaves rotation and
  is probed until it is back. The run starts if at least one server answers
  (a warning for each that does not) and stops only when none is left.
  At the end, a straggling request is raced on another server with room
  (--hedge-budget: at most 5% of the prompts sent twice; one line per id).

on a Ray cluster (--ray [ADDRESS], pip install 'motio[ray]'):
  async worker actors run the prompts; this process reads them as a stream
  and is the only writer of OUT: each id written once, even when a worker
  dies (its unanswered prompts run again on another) or this process is
  killed (what it had received is in OUT; rerun to resume). --concurrency,
  --rpm and --tpm hold for all workers together.

environment:
  MOTIO_STARTUP_TIMEOUT  seconds a server may take to answer the start-up
                         check (default: 10); then exit 3
  HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY
                         the proxy to reach the servers through, and the
                         hosts to reach directly (as curl, requests, httpx)
  SSL_CERT_FILE, SSL_CERT_DIR
                         the CA certificates https servers are verified
                         against (default: the system store; --ca-bundle)

credentials in a URL (http://user:password@host:8000/v1) are sent to that
server as HTTP Basic auth, in place of an API key, and shown as
http://user:***@host:8000/v1 in every message.

exit status: 0 all prompts succeeded; 1 some prompts failed or input lines
were bad (the others ran); 2 bad command line or path; 3 backend unreachable,
API key refused or model not found; 130 interrupted by Ctrl-C, 143 by SIGTERM
(what Slurm, Kubernetes, systemd and timeout send): both stop sending, cancel
what is in flight, keep every result received, print the summary and how to
resume."""

_CHAT_EPILOG = """\
examples:
  motio chat "Write a haiku about rivers"
  echo "Summarise: ..." | motio chat - --system "Answer in one sentence"
  motio chat "Hi" --base-url http://127.0.0.1:8000/v1 --api-key-env MY_KEY"""

_EXPORT_EPILOG = """\
examples:
  motio export out.jsonl --to labeled.parquet --join data.parquet
  motio export out.jsonl --to labeled.csv --join data.csv --id-column review_id
  motio export out.jsonl --to results.jsonl          # the results alone

columns written:
  with --join: every column of the dataset, in its order, then output, the
  answer's parsed fields (when motio run had --json-schema and the answers are
  JSON objects: one column per field, named parsed.FIELD when the dataset
  already has that name; other JSON values: one column parsed, as JSON text),
  then error ("Type: message"). One row per dataset row, in the dataset's
  order; a row without a result (not run yet, or in flight when the run
  stopped) gets nulls. Without --join: id, output, parsed fields, error, one
  row per id of the results file, in the order the ids first appear. When an
  id has several result lines (an error, then a success after --retry-errors)
  the success counts.

The parsed columns are named from the answers (in order of first sight);
--json-schema orders them as the schema does and adds the fields no answer has
yet. Rows are matched by id: --id-column must be what motio run was given
(without it, the ids are line-N, N the row number). The table is written to a
temporary file moved into place at the end: an export that fails leaves
nothing under TABLE; an existing TABLE is replaced, unless it is one of the
inputs (by any path: refused). Memory stays flat at any size.

exit status: 0 written (rows without a result included: the report on stderr
counts rows, answered, failed and missing); 2 bad command line, a file not
found or not what it should be (not a results file, a .parquet that is not
Parquet, --id-column not a column), TABLE one of the inputs or of an unknown
suffix; 130 interrupted by Ctrl-C, 143 by SIGTERM (nothing left under TABLE)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``motio`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parse_args(argv, parser)
        if args is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return _command(args)
    except CliError as exc:
        print(f"motio: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


def parse_args(
    argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> RunArgs | ChatArgs | ExportArgs | None:
    """The command line as typed values; None when it names no command.

    Raises:
        SystemExit: argparse refused the command line (exit 2, its message on stderr).
        CliError: ``motio run`` without a prompts file (a usage error, exit 2).
    """
    namespace = (parser or build_parser()).parse_args(argv)
    if namespace.command == "run":
        return _run_args(namespace)
    if namespace.command == "chat":
        return _chat_args(namespace)
    if namespace.command == "export":
        return _export_args(namespace)
    return None


def _run_args(namespace: argparse.Namespace) -> RunArgs:
    answers = _answer_args(namespace)
    prompts, ray = _ray_took_the_prompts(namespace.prompts, namespace.ray)
    return RunArgs(
        prompts,
        namespace.output,
        _backend_args(namespace, namespace.concurrency),
        _generation_args(namespace, namespace.extra_body),
        retry_errors=namespace.retry_errors,
        quiet=namespace.quiet,
        ray=ray,
        ray_workers=namespace.workers,
        dataset=_dataset_args(namespace),
        answers=answers,
        hedge_budget=namespace.hedge_budget,
    )


def _chat_args(namespace: argparse.Namespace) -> ChatArgs:
    # motio chat has no --concurrency nor --extra-body: the backend's defaults.
    return ChatArgs(
        namespace.prompt,
        _backend_args(namespace, None),
        _generation_args(namespace, None),
        system=namespace.system,
    )


def _export_args(namespace: argparse.Namespace) -> ExportArgs:
    return ExportArgs(
        namespace.results,
        namespace.to,
        join=namespace.join,
        id_column=namespace.id_column,
        json_schema=namespace.json_schema,
    )


def _backend_args(namespace: argparse.Namespace, concurrency: int | str | None) -> BackendArgs:
    return BackendArgs(
        backend=namespace.backend,
        model=namespace.model,
        base_urls=tuple(namespace.base_url or ()),
        endpoints=namespace.endpoints,
        api_key_env=namespace.api_key_env,
        ca_bundle=namespace.ca_bundle,
        concurrency=concurrency,
        max_retries=namespace.max_retries,
        rpm=namespace.rpm,
        tpm=namespace.tpm,
        first_token_timeout=namespace.first_token_timeout,
        total_timeout=namespace.total_timeout,
        metrics_urls=tuple(getattr(namespace, "metrics_url", None) or ()),
        no_metrics=getattr(namespace, "no_metrics", False),
        prefix_routing=not namespace.no_prefix_routing,
    )


def _generation_args(namespace: argparse.Namespace, extra_body: dict[str, Any] | None) -> GenerationArgs:
    return GenerationArgs(
        max_tokens=namespace.max_tokens,
        temperature=namespace.temperature,
        seed=namespace.seed,
        chunk_timeout=namespace.chunk_timeout,
        extra_body=extra_body,
    )


def _ray_took_the_prompts(prompts: str | None, ray: str | None) -> tuple[str, str | None]:
    """``motio run --ray PROMPTS.jsonl ...``: the file is the prompts, not an address.

    ``--ray`` takes an optional address, so argparse gives it the word after
    it; when that word is the prompts file (or ``-``) and no other prompts
    were given, it was meant as ``--ray`` alone.

    Returns:
        The prompts and ``--ray``'s address, as meant.

    Raises:
        CliError: no prompts file at all (a usage error, exit 2).
    """
    if prompts is not None:
        return prompts, ray
    if ray is not None and (ray == "-" or os.path.isfile(ray)):
        return ray, "local"
    raise CliError("the following arguments are required: PROMPTS.jsonl", EXIT_USAGE)


def _command(args: RunArgs | ChatArgs | ExportArgs) -> int:
    # Imported on demand: `motio --help` should not pay for asyncio and co.
    if isinstance(args, RunArgs):
        from ._run import run_command

        return run_command(args)
    if isinstance(args, ExportArgs):
        from ._export import export_command

        return export_command(args)
    from ._chat import chat_command

    return chat_command(args)


def build_parser() -> argparse.ArgumentParser:
    """The full ``motio`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="motio",
        allow_abbrev=False,
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"motio {_version()}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    backend = _backend_options()
    generation = _generation_options()
    _add_run(commands, [backend, generation])
    _add_chat(commands, [backend, generation])
    _add_export(commands)
    return parser


def _add_run(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        parents=parents,
        allow_abbrev=False,
        help="generate for every prompt in a JSONL file, resumable",
        description="Generate for every prompt in PROMPTS.jsonl and append one\n"
        "result line per prompt to OUT.jsonl, concurrently, as each finishes.",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "prompts",
        nargs="?",  # required; see _ray_took_the_prompts for why it is checked by hand
        metavar="PROMPTS.jsonl",
        help="one JSON object per line: motio's own lines or OpenAI Batch request lines; - reads stdin. "
        "With --template: a dataset (.parquet, .csv, .tsv, .jsonl rows)",
    )
    run.add_argument(
        "-o",
        "--output",
        metavar="OUT.jsonl",
        required=True,
        help="results file; appended to, and read to resume; - writes to stdout (no resume)",
    )
    run.add_argument(
        "--concurrency",
        "-c",
        type=_concurrency,
        metavar="N|auto",
        help="generations in flight at once: a number, or auto (hold each server full with "
        "nothing waiting, by its metrics page when it has one, else by first-token times; up to "
        "256, auto:N for another bound); per server, given several. "
        "Default: auto for a server, 1 embedded",
    )
    run.add_argument(
        "--metrics-url",
        metavar="URL",
        action="append",
        help="with --concurrency auto: the server's Prometheus metrics page (vLLM, SGLang, TGI, "
        "llama.cpp), read at most twice a second to keep it at capacity with nothing waiting; "
        "one per server, in --base-url order. Default: each server's <origin>/metrics, tried "
        "once (a server without it is judged by its first-token latency)",
    )
    run.add_argument(
        "--no-metrics",
        action="store_true",
        help="with --concurrency auto: never read servers' metrics pages; follow first-token "
        "latency alone",
    )
    run.add_argument(
        "--extra-body",
        type=_json_object,
        metavar="JSON",
        help="a JSON object merged into every request body (fields a server such as vLLM "
        "understands, e.g. '{\"top_k\": 20}'); a line's own fields take precedence",
    )
    run.add_argument(
        "--retry-errors",
        action="store_true",
        help="run again the prompts whose earlier result is an error",
    )
    run.add_argument(
        "--hedge-budget",
        type=_fraction,
        metavar="FRACTION",
        help="with several servers: once nothing is left to send, a request running longer than "
        "the recent p95 of its kind (and at least 0.5 s) is sent again to another server with room; "
        "the first answer wins, the other request is closed, one line per id (\"raced\": true). "
        "At most FRACTION of the prompts are sent twice; none while servers answer 429/503. "
        "Default: 0.05; 0 turns racing off",
    )
    run.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bar and no summary; problems are still reported",
    )
    _add_ray_options(run)
    _add_dataset_options(run)
    _add_answer_options(run)


def _add_chat(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    chat = commands.add_parser(
        "chat",
        parents=parents,
        allow_abbrev=False,
        help="stream the answer to one prompt to stdout",
        description="Stream the answer to PROMPT to stdout as it is generated.",
        epilog=_CHAT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument("prompt", metavar="PROMPT", help="the prompt, or - to read it from stdin")
    chat.add_argument("--system", metavar="TEXT", help="a system message sent before the prompt")


def _add_export(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        allow_abbrev=False,
        help="write a results file as a table, joined back onto its dataset",
        description="Write the results of motio run as a Parquet, CSV/TSV or JSONL table:\n"
        "with --join, the dataset's rows in their order with output, the parsed\n"
        "fields and error added; without it, the results alone.",
        epilog=_EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("results", metavar="OUT.jsonl", help="the results file motio run wrote (read only)")
    export.add_argument(
        "--to",
        required=True,
        metavar="TABLE",
        help="the table to write; its suffix picks the format: .parquet, .csv, .tsv or .jsonl",
    )
    export.add_argument(
        "--join",
        metavar="DATA",
        help="the dataset motio run read (.parquet, .csv, .tsv, .jsonl): its rows are written "
        "with the results added, in its order",
    )
    export.add_argument(
        "--id-column",
        metavar="COL",
        help="the dataset's id column, as given to motio run (default: line-N, N the row number)",
    )
    export.add_argument(
        "--json-schema",
        metavar="FILE",
        help="the schema file given to motio run: the parsed columns in its order, every field "
        "present even when no answer has it (default: the fields of the answers)",
    )


def _backend_names() -> list[str]:
    """``--backend``'s choices: every name in the backends' registry."""
    # Only the registry's table: no backend module is imported for --help.
    from ..backends._registry import backend_names

    return list(backend_names())


def _backend_help() -> str:
    from ..backends._registry import backend_help

    return backend_help()


def _backend_options() -> argparse.ArgumentParser:
    group = argparse.ArgumentParser(add_help=False)
    options = group.add_argument_group("backend")
    options.add_argument(
        "--backend",
        choices=_backend_names(),
        help=_backend_help(),
    )
    options.add_argument(
        "--model",
        "-m",
        metavar="NAME",
        help="model name on the server, or a GGUF file path for llamacpp",
    )
    options.add_argument(
        "--base-url",
        metavar="URL",
        action="append",
        help="server URL, such as http://127.0.0.1:8000/v1; give it more than once for several "
        "servers of the same model (each request goes to the least loaded)",
    )
    options.add_argument(
        "--endpoints",
        metavar="FILE",
        help="several servers: one URL a line (blank lines and # comments ignored); "
        "with --base-url, both lists are used",
    )
    options.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="read the API key from environment variable VAR (never from the command line)",
    )
    options.add_argument("--api-key", nargs="?", action=_RefuseKeyOnArgv, help=argparse.SUPPRESS)
    options.add_argument(
        "--ca-bundle",
        metavar="PATH",
        help="verify https servers against the CA certificates in this PEM file instead of the "
        "system store (default: the system store, or $SSL_CERT_FILE)",
    )
    options.add_argument(
        "--max-retries",
        type=_non_negative_int,
        metavar="N",
        help="retries of a request that failed before its first token (429, 5xx, reset "
        "connections), with backoff or the server's Retry-After; also how many times a prompt "
        "whose stream broke mid-answer is run again from its start, on another server if "
        "there is one (default: 2; 0: none)",
    )
    options.add_argument("--rpm", type=_positive_float, metavar="N", help="requests per minute at most")
    options.add_argument("--tpm", type=_positive_float, metavar="N", help="tokens per minute at most")
    options.add_argument(
        "--first-token-timeout",
        type=_non_negative_float,
        metavar="SECONDS",
        help="fail a request with no content this long after it was sent (default: 300; 0: no limit)",
    )
    options.add_argument(
        "--total-timeout",
        type=_non_negative_float,
        metavar="SECONDS",
        help="fail a generation that takes longer than this, retries included (default: no limit)",
    )
    options.add_argument(
        "--no-prefix-routing",
        action="store_true",
        help="with several servers, send each request to the least loaded and prompts in file "
        "order (default: prompts sharing a start go to the same server, within a slack of the "
        "least loaded, and a run sends them grouped, so that its prefix cache serves them)",
    )
    return group


def _generation_options() -> argparse.ArgumentParser:
    group = argparse.ArgumentParser(add_help=False)
    options = group.add_argument_group("generation")
    options.add_argument(
        "--max-tokens",
        type=_positive_int,
        metavar="N",
        help="tokens to generate at most (default: 512; OpenAI Batch bodies get it only when given)",
    )
    options.add_argument("--temperature", type=_non_negative_float, metavar="T")
    options.add_argument("--seed", type=int, metavar="N")
    options.add_argument(
        "--chunk-timeout",
        type=_non_negative_float,
        metavar="SECONDS",
        help="fail a generation that sends nothing for this long (0: no limit)",
    )
    return group


class _RefuseKeyOnArgv(argparse.Action):
    """``--api-key``: refused without echoing the key back.

    A key on the command line leaks into shell history and ``ps`` output,
    and argparse's own "unrecognized arguments" error would print it again.
    """

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        parser.error(
            "motio does not take an API key on the command line; put it in an "
            "environment variable and pass --api-key-env VAR"
        )


def _concurrency(text: str) -> int | str:
    if text == "auto":
        return text
    if text.startswith("auto:"):
        _positive_int(text[5:])
        return text
    return _positive_int(text)


def _json_object(text: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("motio")
    except PackageNotFoundError:
        import motio

        return str(getattr(motio, "__version__", "unknown"))


def _add_ray_options(run: argparse.ArgumentParser) -> None:
    cluster = run.add_argument_group("Ray cluster (pip install 'motio[ray]')")
    cluster.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run the batch on Ray workers: without ADDRESS a local Ray instance, 'auto' or "
        "HOST:PORT an existing cluster (a word after --ray that is a file is taken as PROMPTS.jsonl). "
        "Results, resume and limits are the same as without it",
    )
    cluster.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="Ray workers (async actors, hundreds of prompts in flight each); default: one per "
        "CPU of the cluster. --concurrency, --rpm and --tpm hold for all of them together",
    )


def _add_dataset_options(run: argparse.ArgumentParser) -> None:
    data = run.add_argument_group(
        "datasets (.parquet, .csv, .tsv, .jsonl rows; pip install 'motio[data]' for Parquet)"
    )
    template = data.add_mutually_exclusive_group()
    template.add_argument(
        "--template",
        metavar="TEXT",
        help="read the input as a dataset and make each row's prompt from TEXT, {column} "
        "placeholders filled from the row (Python str.format: {{ and }} for literal braces), "
        "e.g. 'Classify the sentiment of: {text}'",
    )
    template.add_argument(
        "--template-file", metavar="PATH", help="as --template, the text read from PATH (one final newline dropped)"
    )
    data.add_argument(
        "--system", metavar="TEXT", help="a system message sent, as written, before each row's prompt"
    )
    data.add_argument(
        "--id-column",
        metavar="COL",
        help="the column holding each row's id (strings or integers; a repeated id is reported and "
        "skipped); default: line-N, N the row's number",
    )


def _dataset_args(namespace: argparse.Namespace) -> DatasetArgs:
    return DatasetArgs(
        template=namespace.template,
        template_file=namespace.template_file,
        system=namespace.system,
        id_column=namespace.id_column,
    )
def _add_answer_options(run: argparse.ArgumentParser) -> None:
    answers = run.add_argument_group("structured outputs and the response cache")
    answers.add_argument(
        "--json-schema",
        metavar="SCHEMA.json",
        help="ask for JSON matching this JSON schema (a server gets it as response_format "
        "json_schema, the embedded model as a grammar) and check every answer: each result "
        "line gets parsed (the JSON value) next to output, or an InvalidOutput error",
    )
    answers.add_argument(
        "--max-invalid",
        type=_non_negative_int,
        metavar="N",
        help="with --json-schema: answers that are not valid JSON or break the schema are asked "
        "again up to N times, then the prompt fails with InvalidOutput (default: 2; 0: never)",
    )
    answers.add_argument(
        "--no-reask-feedback",
        dest="reask_feedback",
        action="store_false",
        help="with --json-schema: ask again with the same messages (a fresh sample; needs "
        "--temperature > 0 to differ) instead of appending the invalid answer and what is wrong with it",
    )
    answers.add_argument(
        "--cache",
        nargs="?",
        const="",
        metavar="PATH",
        help="answer a request identical to one answered before (same model, messages, sampling "
        "options and schema) from this SQLite file, without sending it; shared safely by "
        "concurrent runs. Without PATH: $XDG_CACHE_HOME/motio/responses.sqlite3 "
        "(~/.cache/...). With --temperature > 0 it still answers from the cache: it is for "
        "reruns, not for sampling",
    )


def _answer_args(namespace: argparse.Namespace) -> AnswerArgs:
    cache = namespace.cache
    if namespace.prompts is None and cache and _is_prompts_file(cache):
        # `motio run --cache PROMPTS.jsonl -o ...`: --cache alone, then the
        # prompts (as for --ray: argparse hands the optional value the next word).
        namespace.prompts, cache = cache, ""
    return AnswerArgs(
        json_schema=namespace.json_schema,
        max_invalid=namespace.max_invalid,
        reask_feedback=namespace.reask_feedback,
        cache=cache,
    )


def _is_prompts_file(path: str) -> bool:
    """Whether a word given to ``--cache`` is a file that is not a SQLite database."""
    if path == "-":
        return True
    try:
        with open(path, "rb") as file:
            return file.read(16) != b"SQLite format 3\x00"
    except OSError:
        return False
