"""One error style for every stage and CLI.

A problem the user can fix (a bad params value, a missing upstream output, a folder without fakes, a
split without both labels, a file that is not a checkpoint) is a ``PipelineError``. Stages and CLIs run
their ``main`` through ``run_cli`` (or ``run_stage``), which prints it as one line on stderr,

    <stage>: <what went wrong> — <what to do>

and exits with code 2. Any other exception is a bug and keeps its traceback. Every entry point answers
``--help`` (its module docstring, the params block it reads, what it writes) without running, and an
unknown argument is a one-line error too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

EXIT_USER_ERROR = 2  # what argparse uses for a bad command line, too


class PipelineError(Exception):
    """A problem the user can fix. ``str(e)`` is what went wrong; ``hint`` says what to do (may be empty).

    Subclasses set a class-level ``hint`` that fits all their messages; a raise site can pass its own.
    """

    hint: str = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def line(self, stage: str) -> str:
        """``<stage>: <what went wrong> — <what to do>`` on one line."""
        message = one_line(str(self))
        if message.startswith(f"{stage}: "):
            message = message[len(stage) + 2 :]
        hint = one_line(self.hint)
        return f"{stage}: {message}" + (f" — {hint}" if hint else "")


class InputError(PipelineError, ValueError):
    """An input (a file, a manifest, a data set, weights) that a stage cannot use."""


class MissingInputError(PipelineError, FileNotFoundError):
    """An input that a stage needs is not there (usually: the stage that writes it has not run)."""


def one_line(text: str) -> str:
    """``text`` with its lines joined by spaces (a message may be written over several lines)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def require(path: Path, written_by: str) -> Path:
    """``path`` if it exists, else a MissingInputError naming the stage that writes it."""
    if not path.exists():
        raise MissingInputError(
            f"{path} not found", f"run stage {written_by} first (dvc repro {written_by}, or snakemake)"
        )
    return path


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error style: a bad command line is one line on stderr, exit code 2."""

    def __init__(self, name: str, doc: str | None, epilog: str | None = None) -> None:
        super().__init__(
            prog=f"python -m stages.{name}",
            description=doc,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.stage = name

    def error(self, message: str) -> NoReturn:
        print(f"{self.stage}: {one_line(message)} — see {self.prog} --help", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}; expected a positive integer (>= 1)")
    return value


def stage_parser(name: str, doc: str | None, block: str, writes: Iterable[str]) -> ArgumentParser:
    """The parser of a DAG stage: no arguments; ``--help`` shows the docstring, its block and its outputs."""
    epilog = (
        f"params block: {block} (params.yaml; change values there or with dvc exp run -S {block}.<key>=...)\n"
        f"writes: {', '.join(writes)}\n"
        f"Takes no arguments. A problem you can fix is one line on stderr and exit code {EXIT_USER_ERROR}."
    )
    return ArgumentParser(name, doc, epilog)


def run_cli(name: str, main: Callable[[], int | None]) -> NoReturn:
    """Run an entry point: its return value is the exit code; a PipelineError is one line and exit code 2."""
    try:
        code = main()
    except PipelineError as e:
        sys.stdout.flush()
        print(e.line(name), file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    raise SystemExit(code or 0)


def run_stage(name: str, main: Callable[[], object], doc: str | None, block: str, writes: Iterable[str]) -> NoReturn:
    """``python -m stages.<name>``: answer ``--help`` (or refuse an argument), then run ``main`` via run_cli."""
    stage_parser(name, doc, block, writes).parse_args()

    def run() -> int | None:
        main()
        return None

    run_cli(name, run)
