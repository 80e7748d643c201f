"""protocol.md must hold the message catalogue and both transition tables exactly as the code
defines them (regenerate with ``python -m tests.protocol_tables``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_bench import protocol as p

from .protocol_tables import ALL

SPEC = (Path(__file__).resolve().parent.parent / "protocol.md").read_text()


@pytest.mark.parametrize("name", list(ALL))
def test_protocol_md_has_the_current_table(name: str) -> None:
    assert ALL[name]() in SPEC, f"protocol.md: the {name} table is out of date"


def test_protocol_md_names_every_constant_with_its_value() -> None:
    for text in (
        f"{p.MAX_FRAME_SIZE:,} bytes",
        f"protocol version {p.PROTOCOL_VERSION}",
        f"{p.NBINS} buckets",
        f"{p.MAX_TEXT} characters",
    ):
        assert text in SPEC, text
