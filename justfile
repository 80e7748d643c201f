# triobench developer recipes. Run `just` to list them.
# Everything runs inside ./.venv, created by `just setup` (or by the README commands).

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
py := venv / "bin/python"

# List the recipes
default:
    @just --list --unsorted

# Create .venv and install triobench with its test and dev tools
setup:
    test -x {{py}} || python3 -m venv {{venv}}
    {{py}} -m pip install -q --upgrade pip
    {{py}} -m pip install -q -e '.[dev]'

# A real demo run: local agents on loopback, controller, results in ./results
demo *args: setup
    {{venv}}/bin/triobench run examples/quickstart.yaml {{args}}

# Run the test suite (pass pytest arguments through, e.g. `just test -k frames -x`)
test *args: setup
    {{py}} -m pytest {{args}}

# Lint and check formatting with ruff
lint: setup
    {{venv}}/bin/ruff check trio_bench tests bench
    {{venv}}/bin/ruff format --check trio_bench tests bench

# Format the code with ruff
fmt: setup
    {{venv}}/bin/ruff format trio_bench tests bench
    {{venv}}/bin/ruff check --fix trio_bench tests bench

# Type-check with mypy (strict on the protocol core, stats and config)
typecheck: setup
    {{venv}}/bin/mypy

# Benchmarks: prints a table measured side by side in one run, writes bench/results.md
bench *args: setup
    {{py}} -m bench {{args}}

# Regenerate the tables of protocol.md from the code (a test fails when they drift)
spec: setup
    {{py}} -m tests.protocol_tables --write

# The fault-injection and bad-input suite; rewrites the results table in docs/reliability.md
reliability: setup
    TRIOBENCH_RELIABILITY_REPORT=/tmp/triobench-reliability.json {{py}} -m pytest -m reliability -q
    {{py}} -m tests.reliability_report /tmp/triobench-reliability.json

# Longer reliability variants: 50 back-to-back runs, 200 agents on one controller
soak: setup
    TRIOBENCH_SOAK_RUNS=50 TRIOBENCH_SCALE_AGENTS=200 {{py}} -m pytest -q tests/test_load_scale_soak.py -k "back_to_back or many_agents"
