"""Render docs/reliability.md's results table from a run of the reliability suite.

    TRIOBENCH_RELIABILITY_REPORT=/tmp/rel.json python -m pytest -m reliability
    python -m tests.reliability_report /tmp/rel.json     # rewrites docs/reliability.md

(`just reliability` does both.)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
BEGIN, END = "<!-- results: begin -->", "<!-- results: end -->"


def table(rows: list[dict[str, str]]) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')}: {sum(r['outcome'] == 'passed' for r in rows)} "
        f"of {len(rows)} passed, {sum(r['outcome'] == 'skipped' for r in rows)} skipped, "
        f"{sum(r['outcome'] == 'FAILED' for r in rows)} failed.",
        "",
        "| fault or bad input | expected outcome | measured | result | test |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        test = row["test"].split("::", 1)[1] if "::" in row["test"] else row["test"]
        lines.append(
            f"| {row['fault']} | {row['expected']} | {row['measured']} | {row['outcome']} "
            f"| `{test}` |"
        )
    return "\n".join(lines)


def main() -> None:
    rows = json.loads(Path(sys.argv[1]).read_text())
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + table(rows) + "\n" + text[end:])
    print(f"{DOC}: {len(rows)} rows")


if __name__ == "__main__":
    main()
