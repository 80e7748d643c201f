"""The ``triobench`` command: thin typer commands that parse arguments and call plain functions.

Exit codes (the contract scripts rely on): 0 every agent completed; 1 the run finished but some
agent failed or was lost; 2 invalid config or usage; 3 could not start; 130 aborted by the user.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="triobench: a distributed storage I/O benchmark on Trio.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _not_implemented(what: str) -> None:
    typer.echo(f"triobench: {what} is not implemented yet", err=True)
    raise typer.Exit(2)


@app.command()
def agent() -> None:
    """Run an agent: listen for a controller and run its workloads against storage."""
    _not_implemented("agent")


@app.command()
def controller() -> None:
    """Coordinate agents through a run and write the results directory."""
    _not_implemented("controller")


@app.command()
def run() -> None:
    """One-machine run: start local agents on loopback and run the controller against them."""
    _not_implemented("run")


def main() -> None:
    app()
