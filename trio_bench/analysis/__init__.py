"""Working with finished runs: the HTML report, comparing two runs, merging runs. Reads
results directories only (no Trio, no agents)."""

from ._read import Results, ResultsError, read_results
from ._report import render_report, report_data, write_report

__all__ = [
    "Results",
    "ResultsError",
    "read_results",
    "render_report",
    "report_data",
    "write_report",
]
