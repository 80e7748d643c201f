"""What the controller shows while a run is going: one row per agent plus the aggregate.

On a terminal it is a rich live table redrawn every tick; otherwise (a pipe, CI, a log file)
one plain line per tick. Either way notable events (an agent stalled, disconnected, recovered,
failed) are printed as lines of their own. Drawing happens in the controller's tick task and
never touches the sockets: a slow terminal cannot delay a PING or an ABORT.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import attrs
from rich.console import Console
from rich.live import Live
from rich.table import Table


@attrs.frozen
class AgentView:
    id: str
    state: str
    stage: str
    progress: str
    ops_per_s: float
    mib_per_s: float
    p50_us: float
    p99_us: float
    silent_s: float | None
    note: str
    cpu_cores: float | None = None  # the agent process's CPU use, averaged over the stage


@attrs.frozen
class RunView:
    title: str
    stage: str
    agents: list[AgentView]
    ops_per_s: float
    mib_per_s: float
    p50_us: float
    p99_us: float
    counts: str
    hosts: list[AgentView] = attrs.field(factory=list)  # one row per load host
    cpu_cores: float = 0.0  # the agents' CPU use, in cores, all together
    # where the run is: "workload [#####-----] 5/10 s, 5 s left", "prepare starting in 1.2 s"
    phase: str = ""
    # whether the numbers are a closed window's of the stage running now; a window closes
    # about one stats interval after it ends, so a stage's first second shows none yet
    measured: bool = True


def progress_bar(fraction: float, width: int = 20) -> str:
    """``[#######-------------]``: plain ASCII, so it reads the same in a log file."""
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


MAX_AGENT_ROWS = 24


def _latency(us: float) -> str:
    if us <= 0:
        return "-"
    return f"{us / 1000:.2f}ms" if us >= 1000 else f"{us:.1f}us"


class Display:
    def __init__(self, mode: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "live" if self.stream.isatty() else "plain"
        self.mode = mode
        self.console = Console(file=self.stream, highlight=False)
        self._live: Live | None = None

    def start(self) -> None:
        if self.mode == "live":
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._guarded(self._live.start)

    def stop(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            self._guarded(live.stop)

    def event(self, line: str) -> None:
        if self.mode == "quiet":
            return
        if self._live is not None:
            self._guarded(self._live.console.print, line, markup=False)
        else:
            self._guarded(print, line, file=self.stream, flush=True)

    def update(self, view: RunView) -> None:
        if self.mode == "live" and self._live is not None:
            self._guarded(self._live.update, self._table(view))
        elif self.mode == "plain":
            self._guarded(print, self._line(view), file=self.stream, flush=True)

    def _guarded(self, write: Any, *args: Any, **kwargs: Any) -> None:
        """Write to the terminal; if it is gone (a closed terminal sends SIGHUP, then writes
        fail with EIO), go quiet: the run still finishes and writes its results."""
        try:
            write(*args, **kwargs)
        except (OSError, ValueError):
            self.mode = "quiet"
            self._live = None

    def _line(self, view: RunView) -> str:
        cpu = f" agents' cpu {view.cpu_cores:.1f} cores" if view.cpu_cores else ""
        if view.stage == "done":
            states = ", ".join(f"{a.id} {a.state}" for a in view.agents[:MAX_AGENT_ROWS])
            return f"{view.title} done: {states} | {view.counts}"
        if not view.measured:
            numbers = "all: - ops/s (first window not closed yet)"
        else:
            numbers = (
                f"all: {view.ops_per_s:,.0f} ops/s {view.mib_per_s:,.2f} MiB/s "
                f"p50 {_latency(view.p50_us)} p99 {_latency(view.p99_us)}"
            )
        return f"{view.title} {view.phase or view.stage} {numbers}{cpu} | {view.counts}"

    def _table(self, view: RunView) -> Table:
        title = f"{view.title}  {view.phase}" if view.phase else view.title
        table = Table(
            title=title, title_justify="left", caption=view.counts, caption_justify="left"
        )
        for name, justify in [
            ("agent", "left"),
            ("state", "left"),
            ("stage", "left"),
            ("progress", "right"),
            ("ops/s", "right"),
            ("MiB/s", "right"),
            ("p50", "right"),
            ("p99", "right"),
            ("cpu", "right"),
            ("last frame", "right"),
            ("notes", "left"),
        ]:
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        # more agents than fit on a screen: one row per load host, agents merged
        by_host = len(view.agents) > MAX_AGENT_ROWS and len(view.hosts) < len(view.agents)
        if by_host:
            table.columns[0].header = "host (agents)"
        for agent in view.hosts if by_host else view.agents:
            silent = "-" if agent.silent_s is None else f"{agent.silent_s:.1f}s"
            table.add_row(
                agent.id,
                agent.state,
                agent.stage,
                agent.progress,
                f"{agent.ops_per_s:,.0f}",
                f"{agent.mib_per_s:,.2f}",
                _latency(agent.p50_us),
                _latency(agent.p99_us),
                "-" if agent.cpu_cores is None else f"{agent.cpu_cores:.2f}",
                silent,
                agent.note,
            )
        table.add_row(
            "all",
            "",
            view.stage,
            "" if view.measured else "first window not closed yet",
            f"{view.ops_per_s:,.0f}" if view.measured else "-",
            f"{view.mib_per_s:,.2f}" if view.measured else "-",
            _latency(view.p50_us),
            _latency(view.p99_us),
            "",
            "",
            "",
            style="bold",
        )
        return table
