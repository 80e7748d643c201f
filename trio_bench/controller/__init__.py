"""The controller: coordinates agents through a run, aggregates, writes the results."""

from ._aggregate import (
    OP_LOG_COLUMNS,
    PERF_LOG_COLUMNS,
    Aggregator,
    IntervalRow,
    Sample,
    WindowRows,
)
from ._display import Display
from ._link import AgentLink, LinkFailed
from ._results import (
    HISTOGRAM_FORMAT,
    STAGE_FILES,
    ResultsUnusable,
    ResultsWriter,
    histograms_json,
    new_results_dir,
)
from ._run import (
    EXIT_ABORTED,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_START,
    Controller,
    RunResult,
)

__all__ = [
    "EXIT_ABORTED",
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_START",
    "HISTOGRAM_FORMAT",
    "OP_LOG_COLUMNS",
    "PERF_LOG_COLUMNS",
    "STAGE_FILES",
    "AgentLink",
    "Aggregator",
    "Controller",
    "Display",
    "IntervalRow",
    "LinkFailed",
    "ResultsUnusable",
    "ResultsWriter",
    "RunResult",
    "Sample",
    "WindowRows",
    "histograms_json",
    "new_results_dir",
]
