"""The ``triobench`` command: thin typer commands that parse arguments and call plain functions.

Exit codes (the contract scripts rely on): 0 every agent completed; 1 the run finished but some
agent failed or was lost (partial results written); 2 invalid config or usage; 3 could not
start (agent unreachable, authentication or version mismatch, preflight failed, port in use);
130 aborted by the user. Every error is one line on stderr; no tracebacks.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import attrs
import trio
import typer

from trio_bench import __version__
from trio_bench.clock import skew_from_env
from trio_bench.config import (
    MAX_PROCESSES,
    AgentAddress,
    Config,
    ConfigError,
    agent_problems,
    describe,
    expand_agents,
    load_config,
    split_address,
)

app = typer.Typer(
    help="triobench: a distributed storage I/O benchmark on Trio.\n\n"
    "Quick start: `triobench run examples/quickstart.yaml` runs local agents and a controller "
    "on this machine. On many machines: `triobench agent` on each load host, then "
    "`triobench controller CONFIG` anywhere (or list `{ssh: user@host}` agents in CONFIG and "
    "the controller starts them over SSH). Every run writes RESULTS/report.html; `compare` "
    "and `merge` work on results directories.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

TOKEN_ENV = "TRIOBENCH_TOKEN"
EXIT_CONFIG, EXIT_START, EXIT_ABORTED = 2, 3, 130
OPEN_FILES_CAP = 65536  # the soft limit raised no further than this (or twice what is needed)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"triobench: {message}", err=True)
    return typer.Exit(code)


def _load(path: Path, overrides: Sequence[str] = ()) -> Config:
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        for line in exc.lines:
            typer.echo(f"triobench: {line}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None


def _read_token(token_file: Path | None) -> bytes | None:
    if token_file == Path("-"):  # one line on stdin: how a controller hands it over SSH
        token = sys.stdin.buffer.readline().strip()
        if not token:
            raise _fail("--token-file -: no token on stdin", EXIT_CONFIG)
        return token
    if token_file is not None:
        try:
            token = token_file.read_bytes().strip()
        except OSError as exc:
            raise _fail(f"--token-file {token_file}: {exc.strerror or exc}", EXIT_CONFIG) from None
        if not token:
            raise _fail(f"--token-file {token_file}: the file is empty", EXIT_CONFIG)
        return token
    env = os.environ.get(TOKEN_ENV, "").strip()
    return env.encode() if env else None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"triobench {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Show the version."
        ),
    ] = None,
) -> None:
    """triobench: a distributed storage I/O benchmark on Trio."""


# --- agent ------------------------------------------------------------------------------------


@app.command()
def agent(
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to listen on (port 0: any free port).")
    ] = "127.0.0.1:7761",
    id: Annotated[str | None, typer.Option("--id", help="Agent name (default: HOST-PORT).")] = None,
    root: Annotated[
        Path | None,
        typer.Option(help="Confine every file:// path to this directory (symlinks followed)."),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help=f"Shared secret for controllers (or set {TOKEN_ENV}); '-': the first line of "
            "stdin."
        ),
    ] = None,
    lifeline: Annotated[
        bool,
        typer.Option(
            help="Stop when stdin closes (a controller that started the agent over SSH keeps "
            "it open: when the controller or its connection goes, so does the agent)."
        ),
    ] = False,
    insecure: Annotated[
        bool, typer.Option(help="Allow a non-loopback address without a token (warns).")
    ] = False,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where runs' results are kept locally (default ~/.local/state/triobench)."
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log each connection and run.")
    ] = False,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_PROCESSES,
            help="Run this many agents, one process each, on consecutive ports from the "
            "--listen port (one process uses about one core: use one per core to load a "
            "many-core host). Their ids: ID-1, ID-2, ... with --id, else HOST-PORT. The "
            "controller lists them as HOST:PORTxN.",
        ),
    ] = 1,
) -> None:
    """Run an agent: listen for controllers and run their workloads against the storage.

    Serves one run at a time (another controller gets a clear "busy" error), then the next,
    until SIGTERM or SIGINT. Prints "listening on HOST:PORT" when ready (once per process
    with --processes; a process that crashes is restarted).
    """
    from trio_bench.agent import AGENT_SWITCH_INTERVAL_S, AgentOptions, follow_supervisor

    follow_supervisor()
    _setup_logging(verbose)
    _allow_open_files()  # workers that keep a file open each
    sys.setswitchinterval(AGENT_SWITCH_INTERVAL_S)
    try:
        host, port = split_address(listen) if not listen.endswith(":0") else (listen[:-2], 0)
    except ValueError as exc:
        raise _fail(f"--listen: {exc}", EXIT_CONFIG) from None
    token = _read_token(token_file)
    if lifeline:
        _watch_lifeline()
    if token is None and not _is_loopback(host):
        if not insecure:
            raise _fail(
                f"--listen {listen} is not a loopback address: give a token "
                f"(--token-file or {TOKEN_ENV}) or pass --insecure",
                EXIT_CONFIG,
            )
        typer.echo(
            f"triobench: warning: listening on {listen} without a token: anyone who can reach "
            "this port can run workloads here",
            err=True,
        )
    if root is not None and not root.is_dir():
        raise _fail(f"--root {root}: not a directory", EXIT_CONFIG)
    from trio_bench.protocol import AGENT_ID

    agent_id = id or f"{socket.gethostname()}-{port}"  # port 0: named once it is bound
    if not AGENT_ID.fullmatch(agent_id if processes == 1 else f"{agent_id}-1"):
        raise _fail(
            f"--id {agent_id!r}: 1-64 of A-Z a-z 0-9 . _ - (first not . _ -); it names the "
            "agent's results folder",
            EXIT_CONFIG,
        )
    try:
        skew = skew_from_env()
    except ValueError as exc:
        raise _fail(str(exc), EXIT_CONFIG) from None
    if processes > 1:
        if port + processes - 1 > 65535:
            raise _fail(f"--processes {processes} ports from {port} go past 65535", EXIT_CONFIG)
        if token is not None and token_file == Path("-"):
            os.environ[TOKEN_ENV] = token.decode()  # the agents read stdin no more
        options_argv = [
            *(["--root", str(root)] if root else []),
            *(["--token-file", str(token_file)] if token_file and token_file != Path("-") else []),
            *(["--insecure"] if insecure else []),
            *(["--state-dir", str(state_dir)] if state_dir else []),
            *(["--verbose"] if verbose else []),
        ]
        raise typer.Exit(_supervise_agents(host, port, processes, id, options_argv))
    options = AgentOptions(
        agent_id=agent_id,
        root=str(root) if root else None,
        token=token,
        state_dir=state_dir or Path.home() / ".local" / "state" / "triobench",
        clock_skew_ns=skew,
    )
    try:
        trio.run(_serve_agent, host, port, options, id is None and port == 0)
    except OSError as exc:
        raise _fail(f"cannot listen on {listen}: {exc.strerror or exc}", EXIT_START) from None


def _supervise_agents(
    host: str, port: int, processes: int, agent_id: str | None, options_argv: list[str]
) -> int:
    from trio_bench.agent import StartFailed, supervise

    bracketed = f"[{host}]" if ":" in host else host
    commands = []
    # the same addresses and ids a controller expands HOST:PORTxN into
    if port == 0:  # each agent on a free port of its own
        ids = [f"{agent_id}-{k + 1}" if agent_id else None for k in range(processes)]
        agents = [AgentAddress(f"{bracketed}:0", ident) for ident in ids]
    else:
        agents = list(expand_agents([AgentAddress(f"{bracketed}:{port}", agent_id, processes)]))
    # the same addresses and ids a controller expands HOST:PORTxN into
    for k, agent in enumerate(agents):
        name = agent.id or f"{socket.gethostname()}-{port + k if port else k + 1}"
        argv = [sys.executable, "-m", "trio_bench", "agent", "--listen", agent.address]
        commands.append((name, [*argv, *(["--id", agent.id] if agent.id else []), *options_argv]))
    try:
        trio.run(supervise, commands)
    except BaseExceptionGroup as group:
        failed, rest = group.split(StartFailed)
        if failed is None or rest is not None:
            raise
        first = failed.exceptions[0]
        assert isinstance(first, StartFailed)
        typer.echo(f"triobench: {first}; stopped the others", err=True)
        return first.code if first.code > 0 else EXIT_START
    return 0


def _watch_lifeline() -> None:
    """Stop this process (as SIGTERM does) when stdin reaches its end."""
    import threading

    def watch() -> None:
        while os.read(0, 65536):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


async def _serve_agent(host: str, port: int, options: object, name_by_port: bool) -> None:
    from trio_bench.agent import AgentOptions, AgentServer

    assert isinstance(options, AgentOptions)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    if name_by_port:  # listening on any free port: the default id names the one it got
        options = attrs.evolve(options, agent_id=f"{socket.gethostname()}-{bound[1]}")
    server = AgentServer(options)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            address = f"{bound[0]}:{bound[1]}"
            # one write: with several agents on one stdout (--processes, PYTHONUNBUFFERED),
            # print's separate write of the newline lets the lines interleave
            sys.stdout.write(f"triobench agent {options.agent_id} listening on {address}\n")
            sys.stdout.flush()
            async for signum in signals:
                logging.getLogger("triobench.agent").info(
                    "%s: stopping", signal.Signals(signum).name
                )
                nursery.cancel_scope.cancel()
                break


# --- controller -------------------------------------------------------------------------------

_COUNTED = re.compile(r".+:\d+x\d+")  # HOST:PORTxN: N agents on consecutive ports


def _checked_agents(agents: list[AgentAddress]) -> list[AgentAddress]:
    """Checked as distributed.agents would be, and expanded (HOST:PORTxN)."""
    problems = agent_problems(agents, "--agents")
    if problems:
        raise _fail("; ".join(problems), EXIT_CONFIG)
    return list(expand_agents(agents))


def _agents_from(option: str | None, config: Config) -> list[AgentAddress]:
    if option:
        agents = []
        for part in option.split(","):
            part = part.strip()
            address, times, count = part.rpartition("x") if _COUNTED.match(part) else (part, "", "")
            try:
                split_address(address)
            except ValueError as exc:
                raise _fail(f"--agents: {exc}", EXIT_CONFIG) from None
            agents.append(AgentAddress(address=address, processes=int(count) if times else 1))
        return _checked_agents(agents)
    if not config.distributed.agents and not config.distributed.ssh_agents:
        raise _fail(
            "no agents: give --agents HOST:PORT,... or distributed.agents in the config",
            EXIT_CONFIG,
        )
    return list(config.distributed.agents)


def _allow_open_files(agents: int = 0) -> None:
    """Raise this process's soft limit on open files to its hard limit (capped): Linux's
    default soft limit is often 1024, which a controller with a connection per agent, or an
    agent whose workers keep a file open each, passes. For a controller of ``agents``, fail
    before connecting to anything, in one line, if even the hard limit is too low, instead of
    agents failing one by one with "Too many open files"."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = agents + 256  # results files, logs, launchers' pipes
    wanted = max(OPEN_FILES_CAP, 2 * needed)
    if hard != resource.RLIM_INFINITY:
        wanted = min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    if agents and soft != resource.RLIM_INFINITY and soft < needed:
        raise _fail(
            f"{agents:,} agents need about {needed:,} open files, but this process may open "
            f"only {soft:,} (its hard limit, ulimit -Hn): raise it (nofile in "
            "/etc/security/limits.conf) or split the agents over several controllers",
            EXIT_START,
        )


def _run_controller(
    config: Config,
    agents: list[AgentAddress],
    *,
    token: bytes | None,
    results_dir: Path,
    source: str,
    display_mode: str,
    results_path: Path | None = None,
    local_agents: int | None = None,
    json_output: bool = False,
    tokens: dict[str, bytes] | None = None,
    started: list[str] | None = None,
) -> int:
    from trio_bench.controller import Controller, Display, ResultsUnusable

    def say(line: str) -> None:  # people's output: stderr when stdout carries the JSON
        typer.echo(line, err=json_output)

    display = Display(display_mode, stream=sys.stderr if json_output else None)
    if display_mode != "quiet":
        say(describe(config))
        if " with --set " in source:
            say(f"overrides    {source.split(' with ', 1)[1]}")
    controller = Controller(
        config,
        agents=agents,
        token=token,
        results_base=results_dir,
        results_dir=results_path,
        display=display,
        source=source,
        local_agents=local_agents,
        tokens=tokens,
        started=started or (),
    )
    # Decoding every agent's STATS allocates thousands of short-lived objects per second
    # (msgpack's lists); with the default threshold of 700 the cyclic collector then runs
    # gen-0 passes thousands of times a second. Measured with 500 replayed agents at one
    # frame/s: 79% -> 57% of a core (bench/README.md, replay). Only in this process, which
    # runs nothing else: with hundreds of busy worker threads in one process (an agent) a
    # large gen-0 made the event loop miss its stats instants.
    gc.set_threshold(50_000, 20, 1000)
    try:
        result = trio.run(controller.run)
    except ResultsUnusable as exc:
        raise _fail(str(exc), EXIT_START) from None
    except KeyboardInterrupt:  # a second Ctrl-C just as the run was ending: it has ended
        with contextlib.suppress(OSError):
            typer.echo("triobench: interrupted as the run ended", err=True)
        return EXIT_ABORTED
    report = _report_after_run(result.results_dir) if result.started else None
    # the terminal may be gone (SIGHUP): the results are written, the exit code still counts
    with contextlib.suppress(OSError):
        for line in result.errors:
            typer.echo(f"triobench: {line}", err=True)
        summary = result.results_dir / "summary.tsv"
        if summary.exists():
            say(f"results: {result.results_dir}")
            if report is not None:
                say(f"report: {report}")
            if display_mode != "quiet":
                say(_table(summary.read_text()))
        else:
            say(f"results: {result.results_dir / 'run.json'} (the run did not start)")
        message = result.message if result.message not in ("", result.status) else ""
        message = message.removeprefix(f"{result.status}: ")
        if not result.started:  # its causes are the lines above
            message = "could not start"
        say(f"run {result.status}: {message}" if message else f"run {result.status}")
        if json_output:
            typer.echo(_json_summary(result, report, message))
    return result.exit_code


def _report_after_run(directory: Path) -> Path | None:
    """report.html, written at the end of every run that started. A failure to write it is
    one line; the results themselves are already complete."""
    from trio_bench.analysis import ResultsError, read_results, write_report

    try:
        return write_report(read_results(directory))
    except (ResultsError, OSError) as exc:
        with contextlib.suppress(OSError):
            typer.echo(f"triobench: report not written: {exc}", err=True)
        return None


def _json_summary(result: object, report: Path | None, message: str) -> str:
    """--json: the run's outcome and final numbers as one JSON document."""
    import json

    from trio_bench.analysis import ResultsError, read_results

    directory: Path = result.results_dir  # type: ignore[attr-defined]
    document: dict[str, object] = {
        "status": result.status,  # type: ignore[attr-defined]
        "exit_code": result.exit_code,  # type: ignore[attr-defined]
        "message": message,
        "results_dir": str(directory),
        "report": str(report) if report else None,
        "errors": list(result.errors),  # type: ignore[attr-defined]
    }
    try:
        document.update(read_results(directory).as_json())
    except ResultsError as exc:
        document["errors"] = [*document["errors"], str(exc)]  # type: ignore[misc]
    return json.dumps(document, indent=2)


def _check_display(mode: str) -> None:
    if mode not in DISPLAY_MODES:
        raise _fail(f"--display {mode!r}: expected one of {', '.join(DISPLAY_MODES)}", EXIT_CONFIG)


def _table(tsv: str) -> str:
    rows = [line.split("\t") for line in tsv.strip().splitlines()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


# Command-line overrides of the config (as fio and elbencho users expect): each becomes a
# KEY.PATH=VALUE item applied to the YAML before it is validated, so it is checked, shown in
# the plan and written into config.yaml as run like anything in the file.
DurationOption = Annotated[
    str | None, typer.Option("--duration", help="Override duration (e.g. 30s, 1m30s).")
]
ConcurrencyOption = Annotated[
    int | None, typer.Option("--concurrency", help="Override concurrency (threads per agent).")
]
TargetOption = Annotated[
    str | None, typer.Option("--target", help="Override target (file://..., s3://..., null://).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override any setting: KEY.PATH=VALUE, e.g. --set distributed.dead_after=30s "
        "--set workload[0].weight=5 (repeatable; VALUE is YAML).",
    ),
]


def _overrides(
    duration: str | None, concurrency: int | None, target: str | None, sets: list[str] | None
) -> list[str]:
    out = [] if duration is None else [f"duration={duration}"]
    out += [] if concurrency is None else [f"concurrency={concurrency}"]
    out += [] if target is None else [f"target={target}"]
    return out + list(sets or [])


def _source(config: Path, overrides: Sequence[str]) -> str:
    return (
        f"{config} with " + " ".join(f"--set {o}" for o in overrides) if overrides else str(config)
    )


JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the outcome and final numbers as one JSON document on stdout "
        "(everything for people goes to stderr).",
    ),
]

DISPLAY_MODES = ("auto", "live", "plain", "quiet")
DisplayOption = Annotated[
    str,
    typer.Option(
        help="Live view: auto (a table on a terminal, lines otherwise), live, plain, quiet."
    ),
]


@app.command()
def controller(
    config: Annotated[Path, typer.Argument(help="Workload configuration (YAML).")],
    agents: Annotated[
        str | None,
        typer.Option(help="HOST:PORT,... (default: distributed.agents in the config)."),
    ] = None,
    results_dir: Annotated[Path, typer.Option(help="Where results/<time>-<name>/ goes.")] = Path(
        "results"
    ),
    token_file: Annotated[
        Path | None, typer.Option(help=f"Shared secret of the agents (or set {TOKEN_ENV}).")
    ] = None,
    display: DisplayOption = "auto",
    duration: DurationOption = None,
    concurrency: ConcurrencyOption = None,
    target: TargetOption = None,
    set_: SetOption = None,
    json_output: JsonOption = False,
) -> None:
    """Coordinate agents through a run and write the results directory."""
    _setup_logging(False)
    _check_display(display)
    overrides = _overrides(duration, concurrency, target, set_)
    cfg = _load(config, overrides)
    targets = _agents_from(agents, cfg)
    if agents:  # --agents replaces the config's agents, SSH ones included
        cfg = attrs.evolve(cfg, distributed=attrs.evolve(cfg.distributed, ssh_agents=()))
    token = _read_token(token_file)
    run_args = RunArgs(results_dir, _source(config, overrides), display, json_output)
    _allow_open_files(  # before any SSH launcher opens its pipes
        sum(agent.processes for agent in targets)
        + sum(agent.processes for agent in cfg.distributed.ssh_agents)
    )
    if not cfg.distributed.ssh_agents:
        raise typer.Exit(_run_controller(cfg, targets, token=token, **attrs.asdict(run_args)))
    raise typer.Exit(_run_with_ssh_agents(cfg, targets, token, run_args))


@attrs.frozen
class RunArgs:
    results_dir: Path
    source: str
    display_mode: str
    json_output: bool


def _run_with_ssh_agents(
    cfg: Config, targets: list[AgentAddress], token: bytes | None, run_args: RunArgs
) -> int:
    """Start the config's SSH agents, run, and stop them however the run ends."""
    import secrets

    from trio_bench.controller import ResultsUnusable, new_results_dir
    from trio_bench.remote import SshStartFailed, start_ssh_agents, stop_ssh_agents

    try:
        path = new_results_dir(run_args.results_dir, cfg.name or "run")
    except ResultsUnusable as exc:
        raise _fail(str(exc), EXIT_START) from None
    # agents that listen beyond loopback need a token: without one, a fresh one for this run
    ssh_token = token or secrets.token_hex(32).encode()
    hosts = len(cfg.distributed.ssh_agents)
    if run_args.display_mode != "quiet":
        typer.echo(f"starting agents over SSH on {hosts} host(s) ...", err=run_args.json_output)
    try:
        started = start_ssh_agents(
            cfg.distributed.ssh_agents, cfg.distributed.ssh, ssh_token, path / "ssh"
        )
    except SshStartFailed as exc:
        for line in exc.lines:
            typer.echo(f"triobench: {line}", err=True)
        raise _fail(
            f"could not start the SSH agents (logs in {path / 'ssh'})", EXIT_START
        ) from None
    except OSError as exc:  # no ssh client, say
        raise _fail(f"cannot run ssh: {exc.strerror or exc}", EXIT_START) from None
    try:
        remote = [address for agent in started for address in agent.agents]
        return _run_controller(
            cfg,
            targets + remote,
            token=token,
            results_dir=run_args.results_dir,
            source=run_args.source,
            display_mode=run_args.display_mode,
            json_output=run_args.json_output,
            results_path=path,
            tokens={a.address: ssh_token for a in remote},
            started=[a.address for a in remote],
        )
    finally:
        stop_ssh_agents(started)


# --- run --------------------------------------------------------------------------------------


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Workload configuration (YAML).")],
    local_agents: Annotated[
        int | None,
        typer.Option(
            min=1, max=256, help="Number of local agent processes (default: one per CPU)."
        ),
    ] = None,
    results_dir: Annotated[Path, typer.Option(help="Where results/<time>-<name>/ goes.")] = Path(
        "results"
    ),
    display: DisplayOption = "auto",
    duration: DurationOption = None,
    concurrency: ConcurrencyOption = None,
    target: TargetOption = None,
    set_: SetOption = None,
    json_output: JsonOption = False,
) -> None:
    """One-machine run: start local agents on loopback, run the controller against them.

    Each agent is a separate process on a free 127.0.0.1 port, working under its own prefix
    (agent-1/, agent-2/, ...) unless the config sets shared_storage. Their logs go to
    <results>/agents/<id>/agent.log. The agents are stopped at the end.
    """
    from trio_bench.controller import ResultsUnusable, new_results_dir
    from trio_bench.local import start_local_agents, stop_local_agents

    _setup_logging(False)
    _check_display(display)
    overrides = _overrides(duration, concurrency, target, set_)
    cfg = _load(config, overrides)
    count = local_agents or os.cpu_count() or 1
    _allow_open_files(count)
    try:
        path = new_results_dir(results_dir, cfg.name or "run")
    except ResultsUnusable as exc:
        raise _fail(str(exc), EXIT_START) from None
    try:
        local = start_local_agents(count, path)
    except RuntimeError as exc:
        raise _fail(str(exc), EXIT_START) from None
    try:
        code = _run_controller(
            cfg,
            [agent.as_target() for agent in local],
            token=None,
            results_dir=results_dir,
            source=_source(config, overrides),
            display_mode=display,
            results_path=path,
            local_agents=count,
            json_output=json_output,
        )
    finally:
        stop_local_agents(local)
    raise typer.Exit(code)


# --- report, compare, merge -------------------------------------------------------------------


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="A run's results directory.")],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="The HTML file (default: RESULTS/report.html)."),
    ] = None,
) -> None:
    """Write a run's report: one self-contained HTML file (opens offline) with throughput and
    latency over time per op kind and per host, the latency distributions, every timeline
    event, per-host and per-agent tables, the configuration and the environment."""
    from trio_bench.analysis import ResultsError, read_results, write_report

    try:
        path = write_report(read_results(results), output)
    except ResultsError as exc:
        raise _fail(str(exc), EXIT_CONFIG) from None
    except OSError as exc:
        raise _fail(f"report: cannot write {exc.filename or output}: {exc.strerror}", 1) from None
    typer.echo(f"report: {path} ({path.stat().st_size / 1024:.0f} KiB)")


@app.command()
def compare(
    base: Annotated[Path, typer.Argument(help="The reference run's results directory.")],
    new: Annotated[Path, typer.Argument(help="The run to judge against it.")],
    fail_if_worse: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Exit 1 if any workload throughput drops, or any of its p50/p90/p99/p99.9 "
            "rises, by more than this many percent.",
        ),
    ] = None,
    html_file: Annotated[
        Path | None, typer.Option("--html", help="Also write the table as an HTML file.")
    ] = None,
) -> None:
    """Two runs side by side: per stage and op kind, ops/s, MiB/s, p50/p90/p99/p99.9, the
    change in percent and which way is worse. Exit 2 if they cannot be compared."""
    from trio_bench.analysis import ResultsError, read_results
    from trio_bench.analysis._compare import (
        NotComparable,
        format_html,
        format_table,
        regressions,
    )
    from trio_bench.analysis._compare import compare as compare_runs

    try:
        before, after = read_results(base), read_results(new)
        changes = compare_runs(before, after)
    except (ResultsError, NotComparable) as exc:
        raise _fail(f"cannot compare: {exc}", EXIT_CONFIG) from None
    typer.echo(format_table(before, after, changes))
    if html_file is not None:
        try:
            html_file.write_text(format_html(before, after, changes), encoding="utf-8")
        except OSError as exc:
            raise _fail(f"--html: cannot write {html_file}: {exc.strerror}", 1) from None
    if fail_if_worse is not None:
        worse = regressions(changes, fail_if_worse)
        if worse:
            for c in worse:
                typer.echo(
                    f"worse by {c.worse_by:.1f}% (> {fail_if_worse:g}%): {c.stage} {c.op} "
                    f"{c.metric} {c.base:,.1f} -> {c.new:,.1f}",
                    err=True,
                )
            raise typer.Exit(1)
        typer.echo(f"nothing worse by more than {fail_if_worse:g}%")


@app.command()
def merge(
    runs: Annotated[list[Path], typer.Argument(help="Results directories of one workload.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The new results directory.")],
) -> None:
    """Merge runs of the same workload that ran at the same time (two controllers driving two
    clusters, say) into one results directory: counts add, percentiles come from the merged
    histograms, throughput is over the span of all the runs' windows. report and compare
    accept the result."""
    from trio_bench.analysis import ResultsError, read_results
    from trio_bench.analysis._compare import NotComparable
    from trio_bench.analysis._merge import merge_runs

    try:
        merged = merge_runs([read_results(run) for run in runs], output)
    except (ResultsError, NotComparable) as exc:
        raise _fail(f"cannot merge: {exc}", EXIT_CONFIG) from None
    except OSError as exc:
        raise _fail(f"merge: cannot write {exc.filename or output}: {exc.strerror}", 1) from None
    typer.echo(f"merged {len(runs)} runs into {merged}")
    summary = merged / "summary.tsv"
    if summary.exists():
        typer.echo(_table(summary.read_text()))


# --- validate ---------------------------------------------------------------------------------


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="Workload configuration (YAML).")],
    duration: DurationOption = None,
    concurrency: ConcurrencyOption = None,
    target: TargetOption = None,
    set_: SetOption = None,
) -> None:
    """Check a configuration and print the resolved plan (exit 2 if it is invalid)."""
    overrides = _overrides(duration, concurrency, target, set_)
    cfg = _load(config, overrides)
    typer.echo(describe(cfg))
    if overrides:
        typer.echo(f"overrides    {' '.join(overrides)}")
    typer.echo("config OK")


# --- cleanup ----------------------------------------------------------------------------------


@app.command()
def cleanup(
    results: Annotated[Path, typer.Argument(help="A run's results directory.")],
    agent: Annotated[
        list[str] | None,
        typer.Option("--agent", help="Only this agent's data (repeatable; default: all)."),
    ] = None,
    root: Annotated[
        Path | None, typer.Option(help="Refuse file:// paths outside this directory.")
    ] = None,
) -> None:
    """Remove what a run left on the storage: its prepared objects, every object its puts
    created and every directory its mkdirs made (found by the run's names), for each agent.

    Run it where the storage is reachable: anywhere for s3:// (credentials from the
    environment, as agents read them) or shared file systems; on each load host for disks
    local to the agents (with --agent for that host's agents).
    """
    import json

    _setup_logging(False)
    try:
        record = json.loads((results / "run.json").read_text())
        run_id, listed = str(record["run_id"]), list(record["agents"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _fail(f"{results}: not a triobench results directory ({exc})", EXIT_CONFIG) from None
    cfg = _load(results / "config.yaml")
    ids = [str(entry.get("id")) for entry in listed]
    unknown = sorted(set(agent or []) - set(ids))
    if unknown:
        raise _fail(
            f"--agent {', '.join(unknown)}: not in this run ({', '.join(ids)})", EXIT_CONFIG
        )
    chosen = [(i, name) for i, name in enumerate(ids) if not agent or name in agent]
    try:
        failures = trio.run(_clean_up, cfg, run_id, len(ids), chosen, str(root) if root else None)
    except Exception as exc:  # the storage said no: one line
        raise _fail(f"cleanup: {type(exc).__name__}: {exc}", EXIT_START) from None
    raise typer.Exit(1 if failures else 0)


async def _clean_up(
    cfg: Config, run_id: str, count: int, chosen: list[tuple[int, str]], root: str | None
) -> int:
    from trio_bench.engine import Engine

    failures = 0
    for index, name in chosen:
        prefix = "" if cfg.distributed.shared_storage else f"{name}/"
        engine = Engine(
            cfg, agent_index=index, agent_count=count, prefix=prefix, run_tag=run_id[:8], root=root
        )
        try:
            leftovers = await engine.leftovers()
            run = engine.cleanup_stage(leftovers=leftovers, force=True)
            await run.run(engine.clock.now_ns())
            summary = run.summary("completed")
        finally:
            engine.close()
        removed = summary.ops["delete"].ops if "delete" in summary.ops else 0
        failed = summary.ops["delete"].errors if "delete" in summary.ops else 0
        codes = ", ".join(
            f"{code} {n:,}" for code, n in summary.error_codes.get("delete", {}).items()
        )
        typer.echo(
            f"{name}: removed {removed:,} object(s) of {summary.total:,} the run may have made"
            + (f"; {failed:,} could not be removed ({codes})" if failed else "")
        )
        failures += failed
    return failures


def main() -> None:
    app()
