"""Generate the tables of protocol.md from the code, so the specification cannot drift.

    python -m tests.protocol_tables    # prints the tables; paste them into protocol.md

``tests/test_protocol_md.py`` fails if protocol.md does not contain them verbatim.
"""

from __future__ import annotations

import typing

import attrs

from trio_bench import protocol as p

DIRECTION = {
    "hello": "A→C",
    "auth": "C→A",
    "welcome": "A→C",
    "configure": "C→A",
    "resume": "C→A",
    "resumed": "A→C",
    "ready": "A→C",
    "error": "both",
    "ping": "C→A",
    "pong": "A→C",
    "start": "C→A",
    "started": "A→C",
    "stats": "A→C",
    "stage_done": "A→C",
    "abort": "C→A",
    "aborted": "A→C",
    "completed": "A→C",
    "ack": "both",
    "goodbye": "both",
    "stats_seen": "C→A",
}


def _type(annotation: object) -> str:
    text = str(annotation).replace("typing.", "")
    for name in ("StageSummary", "OpStats", "SessionInfo"):
        text = text.replace(f"trio_bench.protocol._messages.{name}", name)
    text = text.replace("<class '", "").replace("'>", "").replace(" | None", " or nil")
    while (start := text.rfind("dict[str, ")) >= 0:  # innermost first: map[str → ...]
        depth, end = 0, start + 4
        for end in range(start + 4, len(text)):
            depth += {"[": 1, "]": -1}.get(text[end], 0)
            if depth == 0:
                break
        inner = text[start + len("dict[str, ") : end]
        text = f"{text[:start]}map[str → {inner}]{text[end + 1 :]}"
    return {
        "int": "uint64",
        "bytes": "bin",
        "bool": "bool",
        "str": "str",
        "map[str → Any]": "map (the workload config)",
    }.get(text, text.replace("int", "uint64").replace("tuple[", "array[").replace(", ...]", "]"))


def message_table() -> str:
    lines = ["| tag | direction | reliable | fields |", "|---|---|---|---|"]
    for cls in p.MESSAGE_TYPES:
        hints = typing.get_type_hints(cls)
        fields = ", ".join(f"`{f.name}`: {_type(hints[f.name])}" for f in attrs.fields(cls))
        reliable = "yes" if cls.RELIABLE is True else ("if seq > 0" if cls is p.Error else "no")
        lines.append(f"| `{cls.TAG}` | {DIRECTION[cls.TAG]} | {reliable} | {fields} |")
    return "\n".join(lines)


def record_table() -> str:
    lines = ["| record | fields |", "|---|---|"]
    for cls in (p.OpStats, p.StageSummary, p.SessionInfo):
        hints = typing.get_type_hints(cls)
        fields = ", ".join(f"`{f.name}`: {_type(hints[f.name])}" for f in attrs.fields(cls))
        lines.append(f"| {cls.__name__} | {fields} |")
    return "\n".join(lines)


def transition_table(table: dict, states: list, events: list) -> str:
    lines = ["| state | event → next state |", "|---|---|"]
    for state in states:
        moves = []
        for event in events:
            target = table.get((state, event))
            if target is None:
                continue
            name = "prior" if target is p.PRIOR else target.value
            moves.append(f"{event.value} → {'=' if target is state else name}")
        lines.append(f"| {state.value} | {', '.join(moves) or '(terminal)'} |")
    return "\n".join(lines)


def agent_table() -> str:
    return transition_table(p.AGENT_TABLE, list(p.AgentState), list(p.AgentEvent))


def peer_table() -> str:
    return transition_table(p.PEER_TABLE, list(p.PeerState), list(p.PeerEvent))


# configs whose wire forms together use every CONFIGURE config key and form
_CONFIG_SAMPLES = (
    None,  # the README's reference configuration
    "target: s3://bucket/p/\nduration: 10s\nseed: 7\nname: n\nmax_errors: 5\n"
    "io_rate: {iops: 100, distribution: uniform}\ns3: {endpoints: [http://a:9000], "
    "profile: p}\nworkload: [{op: put, path: x/, object_size: 4KiB}, "
    "{op: put, path: y/, size_spec: {type: uniform, min: 1, max: 9}}]\n"
    "distributed: {agents: [{ssh: u@h, processes: 2, id: x}], ssh: {user: u, key: k, "
    "port: 22, options: [-v], command: triobench}}\n",
    # sai3-bench's multi-endpoint and per-agent keys
    "target: file:///m/a/\nmulti_endpoint: {strategy: round_robin, endpoints: [file:///m/a/, "
    "file:///m/b/]}\nprepare: {ensure_objects: [{count: 1, object_size: 1, "
    "use_multi_endpoint: true}]}\nworkload: [{op: get, path: 'd/*', use_multi_endpoint: true}]\n"
    "distributed: {agents: [{address: 'h:1', concurrency_override: 2, target_override: "
    "file:///m/c/, multi_endpoint: {endpoints: [file:///m/c/]}}]}\n",
)
_SIZE_KEYS = {
    "size",
    "size_spec",
    "min",
    "max",
    "mean",
    "std_dev",
    "block_size",
    "buffer_size",
    "multipart_threshold",
    "part_size",
}


def _wire_type(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "uint (bytes)" if key in _SIZE_KEYS else "uint"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return 'str "<n>ns" (duration)' if value.endswith("ns") and value[:-2].isdigit() else "str"
    if isinstance(value, list):
        return "array of map" if value and isinstance(value[0], dict) else "array of str"
    return "map"


def config_table() -> str:
    """Every key of CONFIGURE's ``config`` as a same-version controller sends it."""
    import re
    from pathlib import Path

    from trio_bench.config import config_to_dict, parse_config

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (reference,) = [
        block
        for block in re.findall(r"```yaml\n(.*?)```", readme, re.S)
        if block.startswith("target:")  # the configuration reference; others are excerpts
    ]
    rows: dict[str, set[str]] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                path = f"{prefix}.{key}" if prefix else key
                kinds = rows.setdefault(path, set())
                if item != []:  # an empty array says nothing about its items
                    kinds.add(_wire_type(key, item))
                walk(path, item)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                walk(f"{prefix}[]", item)

    for sample in _CONFIG_SAMPLES:
        walk("", config_to_dict(parse_config(sample or reference)))
    lines = ["| key | wire form |", "|---|---|"]
    for path, kinds in rows.items():
        lines.append(f"| `{path}` | {' or '.join(sorted(kinds))} |")
    return "\n".join(lines)


ALL = {
    "messages": message_table,
    "records": record_table,
    "agent machine": agent_table,
    "controller view": peer_table,
    "config": config_table,
}


def rewrite(text: str) -> str:
    """Replace each ``<!-- generated: NAME -->`` block (marker to the next blank line)."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if line.startswith("<!-- generated: ") and line.endswith(" -->"):
            name = line[len("<!-- generated: ") : -len(" -->")]
            while i < len(lines) and lines[i].strip():
                i += 1  # drop the old table
            out.append(ALL[name]())
    return "\n".join(out)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    spec = Path(__file__).resolve().parent.parent / "protocol.md"
    if "--write" in sys.argv:
        spec.write_text(rewrite(spec.read_text()))
        print(f"rewrote the generated tables in {spec}")
    else:
        for name, make in ALL.items():
            print(f"<!-- generated: {name} -->\n{make()}\n")
