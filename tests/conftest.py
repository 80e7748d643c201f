from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

import pytest

# Rows of docs/reliability.md, recorded by the fault and bad-input tests (see the
# `reliability` fixture) and written as JSON when TRIOBENCH_RELIABILITY_REPORT names a file.
RELIABILITY: list[dict[str, str]] = []
REPORT_ENV = "TRIOBENCH_RELIABILITY_REPORT"


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``reliability(fault, expected, measured)``: one row of the reliability table."""

    def record(fault: str, expected: str, measured: str) -> None:
        RELIABILITY.append(
            {
                "test": request.node.nodeid,
                "fault": fault,
                "expected": expected,
                "measured": measured,
                "outcome": "pending",
            }
        )

    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        for row in RELIABILITY:
            if row["test"] == item.nodeid and row["outcome"] == "pending":
                row["outcome"] = (
                    "passed" if report.passed else "skipped" if report.skipped else "FAILED"
                )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get(REPORT_ENV)
    if path and RELIABILITY:
        with open(path, "w") as f:
            json.dump(RELIABILITY, f, indent=1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: fault-injection and bad-input suite")
    config.addinivalue_line("markers", "soak: long variants, run by `just soak`")


def _s3_server(start):  # type: ignore[no-untyped-def]
    from .s3server import Unavailable

    try:
        server = start()
    except Unavailable as exc:
        pytest.skip(f"no S3 test server: {exc}")
    return server


@pytest.fixture(scope="session")
def moto_server():  # type: ignore[no-untyped-def]
    """moto: a real S3 API server verifying signatures (see tests/s3server.py)."""
    from .s3server import start_moto

    server = _s3_server(start_moto)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3rver_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    """s3rver: an independent S3 implementation (Node.js), also verifying signatures."""
    from .s3server import start_s3rver

    server = _s3_server(lambda: start_s3rver(tmp_path_factory.mktemp("s3rver")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3rver_tls(tmp_path_factory):  # type: ignore[no-untyped-def]
    """s3rver on https:// with a certificate from a test CA (``ca_bundle`` is its PEM)."""
    from .s3server import start_s3rver

    server = _s3_server(lambda: start_s3rver(tmp_path_factory.mktemp("s3rver-tls"), tls=True))
    yield server
    server.stop()
