"""The workload configuration: typed attrs classes, structured strictly from YAML.

One private cattrs converter with ``forbid_extra_keys``: an unknown key is an error, never
ignored. Every mistake becomes one line naming the field path and what is wrong, e.g.
``workload[2].op: unknown operation 'gett' (expected get, put, stat, list, delete)``.
The vocabulary follows sai3-bench so its users can bring their basic configs.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NewType, TypeVar
from urllib.parse import unquote, urlsplit

import attrs
import cattrs
import msgpack
import yaml
from cattrs.errors import BaseValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn

from trio_bench.protocol import (
    AGENT_ID,
    MAX_FRAME_SIZE,
    ORPHAN_TIMEOUT_RANGE_NS,
    STATS_INTERVAL_RANGE_NS,
)

from ._units import (
    exact_duration,
    exact_size,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    show,
)

OPS = ("get", "put", "stat", "list", "delete", "mkdir", "rmdir")
SCHEMES = ("file", "direct", "null", "s3")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
SIZE_KINDS = ("fixed", "uniform", "lognormal")
RATE_DISTRIBUTIONS = ("exponential", "uniform", "fixed")
FAILURE_POLICIES = ("abort", "continue")
FILLS = ("random", "zero")
FILE_SCHEMES = ("file", "direct")  # direct: the same with O_DIRECT (no page cache)
DIRECT_ALIGN = 4096
MAX_COMPRESS_FACTOR = 256  # the random part of each 4 KiB block holds a 16-byte stamp
PAGE_CACHE_MODES = ("normal", "auto", "sequential", "random", "dontneed")
PREPARED_NAME = "prepared-{index:08d}.dat"  # sai3-bench's naming, so its globs still match

Size = NewType("Size", int)
Duration = NewType("Duration", int)  # nanoseconds
Count = NewType("Count", int)  # integer >= 1
Objects = NewType("Objects", int)  # integer >= 0
Weight = NewType("Weight", float)  # number > 0
OpWeight = NewType("OpWeight", float)  # number >= 0
Factor = NewType("Factor", float)  # number >= 1 (dedup_factor, compress_factor)
NO_FACTOR = Factor(1.0)
OpName = NewType("OpName", str)


class ConfigError(Exception):
    """An invalid configuration. ``lines``: one line per mistake, each naming where."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _choice(options: tuple[str, ...], what: str) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in options:
            exc = ValueError(
                f"unknown {what} {show(value)}{_did_you_mean(value, options)} "
                f"(expected {', '.join(options)})"
            )
            exc.__notes__ = [f"@.{attribute.name}"]  # the field, in the error's path
            raise exc

    return check


# --- sizes ------------------------------------------------------------------------------------


@attrs.frozen
class SizeSpec:
    """An object size: fixed, uniform between min and max, or lognormal (clamped to min..max).

    For lognormal, ``mean`` and ``std_dev`` describe the sizes themselves (not the underlying
    normal distribution), as in sai3-bench.
    """

    kind: str = attrs.field(validator=_choice(SIZE_KINDS, "size distribution"))
    size: int = 0
    min: int = 0
    max: int = 0
    mean: int = 0
    std_dev: int = 0

    def __attrs_post_init__(self) -> None:
        if self.kind == "fixed":
            return
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        if self.kind == "lognormal":
            if self.mean <= 0:
                raise ValueError("lognormal needs mean > 0")
            if not self.min <= self.mean <= self.max:
                raise ValueError(f"mean ({self.mean}) is outside min..max ({self.min}..{self.max})")

    @property
    def largest(self) -> int:
        return self.size if self.kind == "fixed" else self.max

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return self.size
        if self.kind == "uniform":
            return rng.randint(self.min, self.max)
        # lognormal with the given mean and standard deviation of the sizes
        variance_ratio = (self.std_dev / self.mean) ** 2
        sigma = math.sqrt(math.log1p(variance_ratio))
        mu = math.log(self.mean) - sigma * sigma / 2
        for _ in range(16):  # resample outside the bounds rather than piling up at them
            value = round(rng.lognormvariate(mu, sigma))
            if self.min <= value <= self.max:
                return value
        return min(max(value, self.min), self.max)

    def describe(self) -> str:
        if self.kind == "fixed":
            return format_size(self.size)
        if self.kind == "uniform":
            return f"uniform {format_size(self.min)}..{format_size(self.max)}"
        return (
            f"lognormal mean {format_size(self.mean)} sd {format_size(self.std_dev)} "
            f"in {format_size(self.min)}..{format_size(self.max)}"
        )


LOGNORMAL_MAX = 1024**4  # a lognormal size's bound where the config gives none
_SIZE_KEYS = ("object_size", "size_spec", "size_distribution", "min_size", "max_size")


def _size_spec_from(value: Any) -> SizeSpec:
    """Every spelling of a size spec: ``4KiB``; ``{type: uniform, min, max}``;
    ``{fixed: 4KiB}``; ``{uniform: {min, max}}``; ``{lognormal: {mean, std_dev, min, max}}``."""
    if isinstance(value, SizeSpec):  # already collected by _pop_size
        return value
    if isinstance(value, int | str) and not isinstance(value, bool):
        return SizeSpec("fixed", size=parse_size(value))
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a size or a size distribution, got {type(value).__name__}")
    spec = dict(value)
    if "type" not in spec and len(spec) == 1:  # sai3-bench short form {fixed: X} / {uniform: {...}}
        ((kind, body),) = spec.items()
        if kind == "fixed":
            return SizeSpec("fixed", size=parse_size(body))
        if not isinstance(body, Mapping):
            raise ValueError(f"{kind}: expected a map of parameters")
        spec = {"type": kind, **body}
    kind = spec.pop("type", None)
    if kind is None:
        raise ValueError("size distribution needs a 'type' (fixed, uniform or lognormal)")
    allowed = {
        "fixed": ("size",),
        "uniform": ("min", "max"),
        "lognormal": ("mean", "std_dev", "min", "max"),
    }.get(kind)
    if allowed is None:
        raise ValueError(
            f"unknown size distribution {show(kind)} (expected {', '.join(SIZE_KINDS)})"
        )
    extra = sorted(set(spec) - set(allowed))
    if extra:
        raise ValueError(f"{kind} size distribution does not take {', '.join(extra)}")
    if kind == "lognormal":  # sai3-bench's bounds are optional: 1 byte to 1 TiB
        spec = {"min": 1, "max": LOGNORMAL_MAX, **spec}
    missing = [k for k in allowed if k not in spec]
    if missing:
        raise ValueError(f"{kind} size distribution needs {', '.join(missing)}")
    return SizeSpec(kind, **{k: parse_size(v) for k, v in spec.items()})


def _pop_size(raw: dict[str, Any]) -> SizeSpec | None:
    """Collect whichever size spelling a mapping uses into one SizeSpec (or None)."""
    given = [k for k in _SIZE_KEYS if k in raw]
    if not given:
        return None
    if set(given) <= {"min_size", "max_size"}:
        if len(given) != 2:
            raise ValueError("min_size and max_size go together")
        low = _at("min_size", parse_size, raw.pop("min_size"))
        high = _at("max_size", parse_size, raw.pop("max_size"))
        if low == high:
            return SizeSpec("fixed", size=low)
        if low > high:
            raise ValueError(f"min_size ({low}) is larger than max_size ({high})")
        return SizeSpec("uniform", min=low, max=high)
    if len(given) > 1:
        raise ValueError(f"give one size: {' or '.join(given)}, not both")
    spec: SizeSpec = _at(given[0], _size_spec_from, raw.pop(given[0]))
    return spec


def _at(key: str, parse: Any, value: Any) -> Any:
    """Run ``parse(value)``; an error gets ``key`` added to its field path."""
    try:
        return parse(value)
    except ValueError as exc:
        exc.__notes__ = [*getattr(exc, "__notes__", []), f"@.{key}"]
        raise


# --- sections ---------------------------------------------------------------------------------


@attrs.frozen
class EnsureObjects:
    """Prepare: make sure ``count`` objects named ``prepared-NNNNNNNN.dat`` exist under base_uri."""

    count: Objects  # 0: an entry that creates nothing (sai3-bench's directory-tree configs)
    size: SizeSpec
    base_uri: str = ""  # relative to the target ("": the target itself)
    fill: str = attrs.field(default="random", validator=_choice(FILLS, "fill"))
    # sai3-bench's data patterns: 1 unit in N unique; 1/C of each 4 KiB block random
    dedup_factor: Factor = NO_FACTOR
    compress_factor: Factor = NO_FACTOR
    # sai3-bench's: spread over ``multi_endpoint`` (all of a run's ops and entries, or none)
    use_multi_endpoint: bool | None = None


@attrs.frozen
class DirectoryStructure:
    """sai3-bench's directory tree: ``width`` subdirectories per directory, ``depth`` levels,
    ``files_per_dir`` files in each leaf (``bottom``) or in every directory (``all``).
    Directory names come from ``dir_mask`` (its two %d: the level, from 1, and the
    position under the parent, from 1); files are ``file_NNNNNNNN.dat``, numbered across
    the tree in level order. The prepare entry beside it gives the files' size and data."""

    width: Count
    depth: Count
    files_per_dir: Objects = Objects(0)
    distribution: str = attrs.field(
        default="bottom", validator=_choice(("bottom", "all"), "distribution")
    )
    dir_mask: str = "sai3bench.d%d_w%d.dir"

    @property
    def directories(self) -> int:
        return sum(self.width**level for level in range(1, self.depth + 1))

    @property
    def file_directories(self) -> int:
        return self.width**self.depth if self.distribution == "bottom" else self.directories

    @property
    def files(self) -> int:
        return self.file_directories * self.files_per_dir


# A tree's directory names are kept in memory by each agent (about 100 bytes each).
MAX_TREE_DIRECTORIES = 2_000_000


@attrs.frozen
class Prepare:
    ensure_objects: tuple[EnsureObjects, ...] = ()
    directory_structure: DirectoryStructure | None = None
    cleanup: bool = False
    # after an abort (Ctrl-C, a failed agent, a lost controller), an agent with cleanup: true
    # spends at most this long deleting what the run created; 0 keeps everything
    cleanup_on_abort: Duration = Duration(60_000_000_000)
    post_prepare_delay: Duration = Duration(0)
    prepare_strategy: str = attrs.field(
        default="parallel", validator=_choice(("sequential", "parallel"), "prepare_strategy")
    )
    # sai3-bench's: skip_verification assumes every prepared object exists (no listing, none
    # written); force_overwrite writes every one, existing or not (no listing either)
    skip_verification: bool = False
    force_overwrite: bool = False


@attrs.frozen
class OpSpec:
    op: OpName
    path: str
    weight: OpWeight = OpWeight(1.0)  # 0: never run (sai3-bench's way to switch one off)
    size: SizeSpec | None = None
    # get: read one block of this size at a random aligned offset in the object, or (access:
    # sequential) the next block of the object being read; put: write the object in blocks
    # of this size. Each block is one op (fio's bs).
    block_size: Size | None = None
    access: str = attrs.field(
        default="random", validator=_choice(("random", "sequential"), "access")
    )
    # rmdir: sai3-bench's; only false (the directories removed are the run's empty ones)
    recursive: bool = False
    # at most this many of this op in flight at once per agent (sai3-bench's per-op
    # concurrency: a limit below the global concurrency; at or above it, no limit)
    concurrency: Count | None = None
    # put only: what the new objects hold (see EnsureObjects)
    fill: str = attrs.field(default="random", validator=_choice(FILLS, "fill"))
    dedup_factor: Factor = NO_FACTOR
    compress_factor: Factor = NO_FACTOR
    # sai3-bench's: spread over ``multi_endpoint`` (all of a run's ops and entries, or none)
    use_multi_endpoint: bool | None = None


@attrs.frozen
class IoRate:
    """Target operations per second for the whole agent, with inter-arrival distribution."""

    iops: Weight
    distribution: str = attrs.field(
        default="exponential", validator=_choice(RATE_DISTRIBUTIONS, "distribution")
    )


@attrs.frozen
class FileOptions:
    fsync: bool = False  # fsync every put before closing it
    buffer_size: Size = Size(1024 * 1024)  # per-worker read buffer; bigger objects are chunked


@attrs.frozen
class S3Options:
    """The ``s3:`` section. Unset values come from the agent's environment (see README)."""

    endpoint: str | None = None
    endpoints: tuple[str, ...] = ()  # several gateways: spread across workers and agents
    region: str | None = None
    addressing: str = attrs.field(
        default="path", validator=_choice(("path", "virtual"), "addressing")
    )
    profile: str | None = None
    multipart_threshold: Size = Size(64 * 1024 * 1024)
    part_size: Size = Size(16 * 1024 * 1024)
    verify_tls: bool = True
    ca_bundle: str | None = None  # PEM file on the agent (else AWS_CA_BUNDLE, else the system's)
    timeout: Duration = Duration(30_000_000_000)
    sign_payload: bool = False  # SHA-256 every body (costs CPU) or send UNSIGNED-PAYLOAD


@attrs.frozen
class MultiEndpoint:
    """sai3-bench's ``multi_endpoint``: several mount points or S3 gateways presenting one
    namespace. An agent's workers are spread over them (worker w of agent i uses endpoint
    (i x concurrency + w) mod n), each worker keeping its endpoint."""

    endpoints: tuple[str, ...]
    # least_connections: taken as round_robin (workers are spread evenly over endpoints
    # that serve the same namespace, and each keeps its connection)
    strategy: str = attrs.field(
        default="round_robin",
        validator=_choice(("round_robin", "least_connections"), "strategy"),
    )


@attrs.frozen
class AgentAddress:
    address: str
    id: str | None = None
    # an agent started with ``--processes N``: N agents on consecutive ports from this one
    processes: int = 1
    # sai3-bench's per-agent overrides: this agent's own worker count, target, endpoints
    concurrency_override: Count | None = None
    target_override: str | None = None
    multi_endpoint: MultiEndpoint | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        return split_address(self.address)


@attrs.frozen
class SshAgents:
    """Agents the controller starts itself over SSH: ``processes`` agent processes on the
    host of ``ssh`` (``host``, ``user@host``, ``ssh://user@host:port``)."""

    ssh: str
    processes: int = 1
    id: str | None = None  # the agents' ids: ID (one process) or ID-1, ID-2, ...


@attrs.frozen
class SshSettings:
    """How the controller reaches SSH agents (``distributed.ssh``). Every key is optional;
    OpenSSH's own configuration (~/.ssh/config) applies as usual."""

    user: str | None = None  # for destinations that name none
    key: str | None = None  # an identity file (ssh -i)
    port: int | None = None  # for destinations that name none (ssh -p)
    options: tuple[str, ...] = ()  # more ssh arguments, e.g. ["-o", "ProxyJump=bastion"]
    command: str = "triobench"  # how to run triobench on the remote host
    timeout: Duration = Duration(30_000_000_000)  # to connect and have every agent listening


@attrs.frozen
class Distributed:
    agents: tuple[AgentAddress, ...] = ()
    ssh_agents: tuple[SshAgents, ...] = ()  # entries of ``agents`` with ``ssh`` (expanded)
    ssh: SshSettings = SshSettings()
    shared_storage: bool = False
    # sai3-bench's: which of a directory tree's directories an agent's gets and stats use
    path_selection: str = attrs.field(
        default="random",
        validator=_choice(("random", "partitioned", "exclusive", "weighted"), "path_selection"),
    )
    partition_overlap: float = 0.3  # partitioned/weighted: the share picked from any directory
    failure_policy: str = attrs.field(
        default="abort", validator=_choice(FAILURE_POLICIES, "failure_policy")
    )
    stats_interval: Duration = Duration(1_000_000_000)
    ping_interval: Duration = Duration(1_000_000_000)
    warn_after: Duration = Duration(5_000_000_000)
    dead_after: Duration = Duration(15_000_000_000)
    probe_timeout: Duration = Duration(5_000_000_000)
    give_up_after: Duration = Duration(60_000_000_000)
    start_delay: Duration = Duration(2_000_000_000)
    orphan_timeout: Duration = Duration(90_000_000_000)
    connect_timeout: Duration = Duration(10_000_000_000)
    configure_timeout: Duration = Duration(120_000_000_000)
    resend_interval: Duration = Duration(2_000_000_000)


@attrs.frozen
class Config:
    target: str  # required, unless multi_endpoint gives it (config_from_dict)
    workload: tuple[OpSpec, ...]
    duration: Duration = Duration(60_000_000_000)
    concurrency: Count = Count(1)
    warmup: Duration = Duration(0)
    io_rate: IoRate | None = None
    prepare: Prepare = Prepare()
    distributed: Distributed = Distributed()
    max_errors: int | None = None
    page_cache_mode: str = attrs.field(
        default="normal", validator=_choice(PAGE_CACHE_MODES, "page_cache_mode")
    )
    file: FileOptions = FileOptions()
    s3: S3Options = S3Options()
    seed: int | None = None
    name: str | None = None
    multi_endpoint: MultiEndpoint | None = None
    # sai3-bench keys read and set aside, with why (shown by validate; never sent to agents)
    notes: tuple[str, ...] = attrs.field(default=(), eq=False)

    @property
    def scheme(self) -> str:
        return urlsplit(self.target).scheme

    @property
    def writes(self) -> bool:
        """Whether the run writes to the target (prepare, put, delete or cleanup)."""
        return bool(
            self.prepare.ensure_objects or any(op.op in ("put", "delete") for op in self.workload)
        )


# --- paths ------------------------------------------------------------------------------------


MAX_PROCESSES = 256
# Worker threads per agent. Each is an OS thread sharing the agent's one GIL: past a few
# hundred they only queue for it (and each costs a read buffer and a stack). Storage that
# needs more operations in flight needs more agents, not more threads in one.
MAX_CONCURRENCY = 1024
MAX_BUFFERS = 4 * 1024**3


def expand_agents(agents: Sequence[AgentAddress]) -> tuple[AgentAddress, ...]:
    """One entry per agent process: ``{address: h:7761, id: a, processes: 3}`` is agents
    a-1, a-2, a-3 at h:7761, h:7762, h:7763 (without an id, each agent names itself)."""
    out = []
    for agent in agents:
        if agent.processes == 1:
            out.append(agent)
            continue
        host, port = split_address(agent.address)
        host = f"[{host}]" if ":" in host else host
        for k in range(agent.processes):
            out.append(
                attrs.evolve(
                    agent,
                    address=f"{host}:{port + k}",
                    id=f"{agent.id}-{k + 1}" if agent.id else None,
                    processes=1,
                )
            )
    return tuple(out)


def agent_problems(agents: Sequence[AgentAddress], where: str = "distributed.agents") -> list[str]:
    """What is wrong with a list of agents, one line each, naming the entry."""
    lines = []
    ok = True
    for i, agent in enumerate(agents):
        try:
            _host, port = split_address(agent.address)
        except ValueError as exc:
            lines.append(f"{where}[{i}].address: {exc}")
            ok = False
            continue
        if agent.id is not None and not AGENT_ID.fullmatch(agent.id):
            lines.append(
                f"{where}[{i}].id: {show(agent.id)} must be 1-64 of A-Z a-z 0-9 . _ - "
                "(it names a results folder and a path prefix)"
            )
        if not 1 <= agent.processes <= MAX_PROCESSES:
            lines.append(f"{where}[{i}].processes: must be 1 to {MAX_PROCESSES}")
            ok = False
        elif port + agent.processes - 1 > 65535:
            lines.append(
                f"{where}[{i}].processes: {agent.processes} ports from {port} go past 65535"
            )
            ok = False
    if ok:
        expanded = expand_agents(agents)
        ids = [a.id for a in expanded if a.id]
        if len(set(ids)) != len(ids):
            lines.append(f"{where}: agent ids must be unique")
        addresses = [a.address for a in expanded]
        if len(set(addresses)) != len(addresses):
            lines.append(f"{where}: an address is listed twice")
    return lines


def parse_destination(text: str) -> tuple[str | None, str, int | None]:
    """An OpenSSH destination as (user, host, port): ``host``, ``user@host``,
    ``ssh://[user@]host[:port]`` (``[v6]`` in brackets). ``ValueError`` if it is not one."""
    bad = ValueError(
        f"{show(text)} is not an SSH destination (host, user@host, ssh://user@host:port)"
    )
    port: int | None = None
    user, _, hostport = text.rpartition("@")
    if text.startswith("ssh://"):
        user, _, hostport = text[len("ssh://") :].rstrip("/").rpartition("@")
        tail = ""
        if hostport.startswith("["):
            host, _, tail = hostport[1:].partition("]")
            tail = tail.removeprefix(":")
        elif hostport.count(":") == 1:
            host, _, tail = hostport.partition(":")
        else:
            host = hostport
        if tail:
            if not tail.isdigit() or not 0 < int(tail) < 65536:
                raise bad
            port = int(tail)
        hostport = host
    host = hostport
    if not host or host.startswith("-") or user.startswith("-") or "/" in host:
        raise bad
    if any(ch.isspace() or ch in "'\"\\" for ch in text):
        raise bad
    return (user or None), host, port


def ssh_problems(dist: Distributed, where: str = "distributed.agents") -> list[str]:
    lines = []
    for i, agent in enumerate(dist.ssh_agents):
        try:
            parse_destination(agent.ssh)
        except ValueError as exc:
            lines.append(f"{where}[ssh {i}].ssh: {exc}")
        if not 1 <= agent.processes <= MAX_PROCESSES:
            lines.append(f"{where}[ssh {i}].processes: must be 1 to {MAX_PROCESSES}")
        if agent.id is not None and not AGENT_ID.fullmatch(agent.id):
            lines.append(f"{where}[ssh {i}].id: {show(agent.id)} must be 1-64 of A-Z a-z 0-9 . _ -")
    ssh = dist.ssh
    if ssh.port is not None and not 0 < ssh.port < 65536:
        lines.append("distributed.ssh.port: must be 1 to 65535")
    if not ssh.command.strip():
        lines.append("distributed.ssh.command: must not be empty")
    if ssh.user is not None and (not ssh.user or ssh.user.startswith("-") or "@" in ssh.user):
        lines.append(f"distributed.ssh.user: {show(ssh.user)} is not a user name")
    return lines


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{show(address)} is not HOST:PORT")
    return host.strip("[]"), int(port)


def check_relative_path(path: str) -> None:
    """Workload paths are relative to the target; refuse anything that could escape it."""
    if not path:
        raise ValueError("path is empty")
    if "\0" in path:
        raise ValueError("path contains a NUL byte")
    if path.startswith("/") or "\\" in path:
        raise ValueError(f"path {show(path)} must be relative to the target (no leading /, no \\)")
    if "%" in path and unquote(path) != path:
        raise ValueError(f"path {show(path)} contains URL-encoded characters")
    parts = path.rstrip("/").split("/")
    if any(part in ("..", ".", "") for part in parts):
        raise ValueError(f"path {show(path)} has an empty, '.' or '..' segment")


def split_pattern(path: str) -> tuple[str, str]:
    """``data/prepared-*.dat`` -> (``data/``, ``prepared-*.dat``). Globs only in the last part."""
    directory, _, pattern = path.rpartition("/")
    if any(ch in directory for ch in "*?["):
        raise ValueError(
            f"path {show(path)}: wildcards are only supported in the last path segment"
        )
    if not pattern:  # a directory: every object in it (sai3-bench's `path: data/`)
        return directory + "/", "*"
    return (directory + "/" if directory else ""), pattern


def relative_to_target(target: str, uri: str) -> str:
    """An ensure_objects base_uri: relative, or an absolute URI under the target."""
    if "://" not in uri:
        return uri
    if not uri.startswith(target.rstrip("/") + "/") and uri.rstrip("/") != target.rstrip("/"):
        raise ValueError(f"{show(uri)} is not under the target {show(target)}")
    return uri[len(target.rstrip("/")) + 1 :]


def prepared_name(index: int) -> str:
    return PREPARED_NAME.format(index=index)


# --- the converter ----------------------------------------------------------------------------

T = TypeVar("T")


def _strict(kind: type, name: str) -> Any:
    def structure(value: Any, _type: Any) -> Any:
        if type(value) is not kind:
            raise ValueError(f"expected {name}, got {_yaml_type(value)}")
        return value

    return structure


def _yaml_type(value: Any) -> str:
    return {
        dict: "a map",
        list: "a list",
        str: f"the string {show(value)}",
        bool: f"{show(value)}",
        type(None): "nothing",
    }.get(type(value), show(value))


def _whole_number(least: int) -> Any:
    """A structure hook: an integer >= ``least`` (Count: 1, Objects: 0)."""

    def structure(value: Any, _type: Any) -> int:
        if type(value) is not int:
            raise ValueError(f"expected a whole number >= {least}, got {_yaml_type(value)}")
        if value < least:
            raise ValueError(f"must be at least {least}, got {value}")
        return value

    return structure


def _number(least: float, *, above: bool = False, meaning: str = "") -> Any:
    """A structure hook: a finite number >= ``least`` (> with ``above``), as a float."""
    bound = f"{'>' if above else '>='} {least:g}"

    def structure(value: Any, _type: Any) -> float:
        if type(value) not in (int, float):
            raise ValueError(f"expected a number {bound}, got {_yaml_type(value)}")
        if not (value > least if above else value >= least) or math.isinf(value):
            raise ValueError(f"must be a number {bound}{meaning}, got {value}")
        return float(value)

    return structure


def _number_or_string(text: str) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a number is what was meant."""
    try:
        return float(text)
    except ValueError:
        return text


def _did_you_mean(word: object, options: Sequence[str]) -> str:
    """`` (did you mean 'get'?)`` for a near miss, else nothing."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _known_keys(cls: Any) -> list[str]:
    """The keys a section takes, as written in a config (sizes have several spellings)."""
    if cls is None or not attrs.has(cls):
        return []
    names = [field.name for field in attrs.fields(cls)]
    if "size" in names:
        names = [n for n in names if n != "size"] + list(_SIZE_KEYS)
    return names


def _op_name(value: Any, _type: Any) -> str:
    if value not in OPS:
        raise ValueError(
            f"unknown operation {show(value)}{_did_you_mean(value, OPS)} "
            f"(expected {', '.join(OPS)})"
        )
    return str(value)


def _make_converter() -> cattrs.Converter:
    c = cattrs.Converter(forbid_extra_keys=True)
    c.register_structure_hook(int, _strict(int, "a whole number"))
    c.register_structure_hook(str, _strict(str, "a string"))
    c.register_structure_hook(bool, _strict(bool, "true or false"))
    c.register_structure_hook(Size, lambda v, _t: parse_size(v))
    c.register_structure_hook(Duration, lambda v, _t: parse_duration(v))
    c.register_structure_hook(Count, _whole_number(1))
    c.register_structure_hook(Objects, _whole_number(0))
    c.register_structure_hook(Weight, _number(0, above=True))
    c.register_structure_hook(OpWeight, _number(0))
    c.register_structure_hook(Factor, _number(1, meaning=" (1 = none)"))
    c.register_structure_hook(OpName, _op_name)
    c.register_structure_hook(SizeSpec, lambda v, _t: _size_spec_from(v))

    def is_tuple(t: Any) -> bool:
        return getattr(t, "__origin__", None) is tuple

    def tuple_factory(t: Any) -> Any:
        (inner, _ellipsis) = t.__args__
        element = c.get_structure_hook(inner)

        def structure(value: Any, _type: Any) -> Any:
            if not isinstance(value, list):
                raise ValueError(f"expected a list, got {_yaml_type(value)}")
            errors = []
            out = []
            for index, item in enumerate(value):
                try:
                    out.append(element(item, inner))
                except Exception as exc:  # collected with their index, re-raised as a group
                    exc.__notes__ = [f"@[{index}]", *getattr(exc, "__notes__", [])]
                    errors.append(exc)
            if errors:
                raise _IndexedErrors(errors)
            return tuple(out)

        return structure

    c.register_structure_hook_factory(is_tuple, tuple_factory)

    def section_factory(cls: Any) -> Any:
        """Every section is a map: anything else is one clear line, not an AttributeError."""
        base: Any = make_dict_structure_fn(cls, c, _cattrs_forbid_extra_keys=True)

        def structure(value: Any, _type: Any) -> Any:
            if not isinstance(value, Mapping):
                raise ValueError(f"expected a map, got {_yaml_type(value)}")
            return base(value, cls)

        return structure

    c.register_structure_hook_factory(attrs.has, section_factory)

    def with_sizes(cls: type, *, required: bool) -> None:
        base: Any = make_dict_structure_fn(cls, c, _cattrs_forbid_extra_keys=True)

        def structure(value: Any, _type: Any) -> Any:
            if not isinstance(value, Mapping):
                raise ValueError(f"expected a map, got {_yaml_type(value)}")
            raw = dict(value)
            if "size" in raw:  # a spelling sai3-bench's configs use for a fixed size
                if "object_size" in raw:
                    raise ValueError("give one size: object_size or size, not both")
                raw["object_size"] = raw.pop("size")
            size = _pop_size(raw)
            if size is not None:
                raw["size"] = size
            elif required:
                raise ValueError(f"needs a size: one of {', '.join(_SIZE_KEYS)}")
            return base(raw, cls)

        c.register_structure_hook(cls, structure)

    with_sizes(EnsureObjects, required=True)
    with_sizes(OpSpec, required=False)

    # `io_rate: 500` is shorthand for {iops: 500}
    rate_base = make_dict_structure_fn(IoRate, c, _cattrs_forbid_extra_keys=True)

    def io_rate(value: Any, _type: Any) -> IoRate:
        if type(value) is str:
            value = _number_or_string(value)
        if type(value) in (int, float):
            value = {"iops": value}
        if not isinstance(value, Mapping):
            raise ValueError(f"expected ops/s or a map {{iops, distribution}}, got {show(value)}")
        value = dict(value)
        if type(value.get("iops")) is str:
            value["iops"] = _number_or_string(value["iops"])
        if value.get("distribution") == "deterministic":  # sai3-bench's name for fixed
            value["distribution"] = "fixed"
        return rate_base(value, IoRate)

    c.register_structure_hook(IoRate, io_rate)

    # `agents` holds addresses and SSH destinations alike; SSH ones (and their host ranges,
    # lg{1...16}) become `ssh_agents`
    distributed_base = make_dict_structure_fn(Distributed, c, _cattrs_forbid_extra_keys=True)

    def distributed(value: Any, _type: Any) -> Distributed:
        if isinstance(value, Mapping) and isinstance(value.get("agents"), list | tuple):
            value = dict(value)
            entries = list(value["agents"])
            ssh = [e for e in entries if isinstance(e, Mapping) and "ssh" in e]
            value["agents"] = [e for e in entries if not (isinstance(e, Mapping) and "ssh" in e)]
            if ssh:
                expanded = []
                for entry in ssh:
                    for destination in expand_hosts(str(entry["ssh"])):
                        expanded.append({**entry, "ssh": destination})
                value["ssh_agents"] = [*value.get("ssh_agents", []), *expanded]
        return distributed_base(value, Distributed)

    c.register_structure_hook(Distributed, distributed)
    return c


_RANGE = re.compile(r"\{(\d+)\.\.\.(\d+)\}")
MAX_HOST_RANGE = 10_000


def expand_hosts(text: str) -> list[str]:
    """warp's host ranges: ``lg{1...4}`` is lg1 lg2 lg3 lg4, ``n{01...12}`` keeps the zero
    padding, and several ranges multiply. ``ValueError`` for a range that runs backwards or
    expands to more than 10,000 names."""
    match = _RANGE.search(text)
    if match is None:
        return [text]
    low, high = match.group(1), match.group(2)
    if int(high) < int(low):
        raise ValueError(f"host range {{{low}...{high}}} runs backwards")
    if int(high) - int(low) + 1 > MAX_HOST_RANGE:
        raise ValueError(f"host range {{{low}...{high}}} has more than {MAX_HOST_RANGE:,} hosts")
    width = len(low) if low.startswith("0") and len(low) > 1 else 0
    out: list[str] = []
    for n in range(int(low), int(high) + 1):
        out += expand_hosts(text[: match.start()] + str(n).zfill(width) + text[match.end() :])
        if len(out) > MAX_HOST_RANGE:
            raise ValueError(f"host ranges in {show(text)} expand to more than {MAX_HOST_RANGE:,}")
    return out


class _IndexedErrors(Exception):
    def __init__(self, errors: list[Exception]) -> None:
        super().__init__(f"{len(errors)} error(s)")
        self.errors = errors


_converter = _make_converter()


def _flatten(exc: BaseException, path: str) -> list[str]:
    """Turn nested cattrs errors into 'path: message' lines."""
    notes = [n for n in getattr(exc, "__notes__", []) if isinstance(n, str)]
    for note in notes:
        if note.startswith("@"):
            path += note[1:]
    if isinstance(exc, _IndexedErrors):
        return [line for e in exc.errors for line in _flatten(e, path)]
    if isinstance(exc, ForbiddenExtraKeysError):
        prefix = f"{path}." if path else ""
        known = _known_keys(getattr(exc, "cl", None))
        return [
            f"{prefix}{name}: unknown key{_did_you_mean(name, known)}"
            for name in sorted(exc.extra_fields)
        ]
    if isinstance(exc, BaseValidationError):
        lines = []
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                if type(note) is str:  # ours ("@.field"): read by the call below
                    continue
                name = getattr(note, "name", None)
                index = getattr(note, "index", None)
                if name is not None:
                    sub_path = f"{path}.{name}" if path else str(name)
                elif index is not None:
                    sub_path = f"{path}[{index}]"
            lines.extend(_flatten(sub, sub_path))
        return lines
    where = f"{path}: " if path else ""
    if isinstance(exc, KeyError):
        return [f"{where}required field missing"]
    return [f"{where}{exc}"]


# --- loading ----------------------------------------------------------------------------------


# A workload config is a few kilobytes; 1 MiB is room for thousands of agents listed one by
# one. The bound keeps a wrong file (a log, a data set) from taking minutes to parse.
MAX_CONFIG_BYTES = 1024 * 1024
# YAML aliases let a few hundred bytes describe billions of values ("billion laughs"): a
# config may use aliases, but what they expand to is bounded.
MAX_CONFIG_VALUES = 1_000_000
# PyYAML's libyaml-based loader is ~10x faster where the C extension is installed.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# The config travels in CONFIGURE, one frame; the rest of that message is far below 64 KiB.
MAX_WIRE_CONFIG = MAX_FRAME_SIZE - 64 * 1024
# msgpack carries integers in [-2**63, 2**64 - 1]; a config goes to agents in msgpack.
_WIRE_INT_MIN, _WIRE_INT_MAX = -(2**63), 2**64 - 1


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read and validate a YAML config file, with command-line ``overrides``
    (``KEY.PATH=VALUE``, see ``apply_overrides``); ``ConfigError`` lists every mistake."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; is this a workload config?"]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"]
        ) from None
    config = parse_config(text, source=str(path), overrides=overrides)
    if config.name is None:
        config = attrs.evolve(config, name=path.stem)
    return config


_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def apply_overrides(raw: Any, overrides: Sequence[str]) -> Any:
    """Set ``KEY.PATH=VALUE`` items in a parsed config (fio/elbencho-style command-line
    overrides). VALUE is read as YAML (``8``, ``true``, ``30s``, ``{iops: 100}``); a list
    entry is ``workload[0].weight`` (or ``workload.0.weight``). Missing maps are created, so
    a mistyped key is reported by validation like any other."""
    if not overrides:
        return raw
    data: Any = raw if isinstance(raw, dict) else {}
    for item in overrides:
        where, equals, text = item.partition("=")
        where = where.strip()
        steps: list[str | int] = []
        for part in where.split("."):
            matched = _STEP.findall(part)
            if not part or "".join(n or f"[{i}]" for n, i in matched) != part:
                steps = []
                break
            for name, index in matched:
                steps.append(int(index) if index else int(name) if name.isdigit() else name)
        if not equals or not steps or not isinstance(steps[0], str):
            raise ConfigError([f"--set {show(item)}: expected KEY.PATH=VALUE, e.g. duration=30s"])
        try:
            value = yaml.load(text, Loader=_Loader) if text.strip() else ""
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "invalid"
            raise ConfigError(
                [f"--set {show(item)}: the value is not valid YAML ({problem})"]
            ) from None
        node: Any = data
        for position, step in enumerate(steps[:-1]):
            following = steps[position + 1]
            node = _descend(node, step, following, item)
        last = steps[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise ConfigError([f"--set {show(item)}: there is no entry {last} there"])
        elif not isinstance(node, dict):
            raise ConfigError([f"--set {show(item)}: {where.rpartition('.')[0]} is not a map"])
        node[last] = value
    return data


def _descend(node: Any, step: str | int, following: str | int, item: str) -> Any:
    if isinstance(step, int):
        if not isinstance(node, list) or step >= len(node):
            raise ConfigError([f"--set {show(item)}: there is no entry {step} there"])
        return node[step]
    if not isinstance(node, dict):
        raise ConfigError([f"--set {show(item)}: the value before {step!r} is not a map"])
    if step not in node or node[step] is None:
        node[step] = [] if isinstance(following, int) else {}
    return node[step]


def parse_config(text: str, *, source: str = "config", overrides: Sequence[str] = ()) -> Config:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{source}: larger than {MAX_CONFIG_BYTES // 1024} KiB"])
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    _check_expansion(raw, source)
    return config_from_dict(apply_overrides(raw, overrides))


def _check_expansion(raw: Any, source: str) -> None:
    """Refuse a document whose aliases expand beyond ``MAX_CONFIG_VALUES`` values, or refer
    to themselves. Counts each shared node once per use, in time linear in the document."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, list | dict):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError([f"{source}: a YAML alias refers to itself (a recursive value)"])
        active.add(key)
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_CONFIG_VALUES:
                raise ConfigError(
                    [
                        f"{source}: YAML aliases expand to more than {MAX_CONFIG_VALUES:,} "
                        "values; write the config out"
                    ]
                )
        active.discard(key)
        sizes[key] = total
        return total

    try:
        size(raw)
    except RecursionError:
        raise ConfigError([f"{source}: nested too deeply"]) from None


def wire_problems(data: Any, path: str = "") -> list[str]:
    """What in plain config data cannot travel to agents: integers outside msgpack's range,
    strings that are not valid Unicode text (lone surrogates). One line each, naming where."""
    lines: list[str] = []

    def walk(value: Any, where: str) -> None:
        if len(lines) >= 20:
            return
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return
        if isinstance(value, int):
            if not _WIRE_INT_MIN <= value <= _WIRE_INT_MAX:
                lines.append(f"{where or 'config'}: {show(value)} is out of range (at most 2^64-1)")
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                lines.append(
                    f"{where or 'config'}: not valid text (character "
                    f"{value[exc.start]!a} at position {exc.start})"
                )
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(key, where)
                walk(item, f"{where}.{key}" if where else str(key))
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")

    walk(data, path)
    return lines


def config_from_dict(raw: Any) -> Config:
    """Structure and validate an already-parsed config (e.g. received in CONFIGURE)."""
    if not isinstance(raw, Mapping):
        raise ConfigError([f"config: expected a map of settings, got {_yaml_type(raw)}"])
    problems = wire_problems(raw)
    if problems:
        raise ConfigError(problems)
    if "name" in raw and raw["name"] is None:
        raw = {k: v for k, v in raw.items() if k != "name"}
    from ._sai3 import from_sai3  # imports this module: the dialect builds on it

    raw, notes, mistakes = from_sai3(raw)
    if mistakes:
        raise ConfigError(mistakes)
    try:
        config = _converter.structure(raw, Config)
    except Exception as exc:
        raise ConfigError(_flatten(exc, "")) from None
    config, lines = _paths_under_target(config)
    if lines:
        raise ConfigError(lines)
    wire = _unstructure(config, human=False)
    lines = validate(config) + wire_problems(wire)
    if not lines:
        size = len(msgpack.packb(wire))
        if size > MAX_WIRE_CONFIG:
            lines.append(
                f"config: {size:,} bytes as sent to agents, over the protocol's limit of "
                f"{MAX_WIRE_CONFIG:,} (frames are at most {MAX_FRAME_SIZE:,} bytes)"
            )
    if lines:
        raise ConfigError(lines)
    if any(a.processes != 1 for a in config.distributed.agents):
        agents = expand_agents(config.distributed.agents)
        config = attrs.evolve(config, distributed=attrs.evolve(config.distributed, agents=agents))
    if notes:
        config = attrs.evolve(config, notes=tuple(notes))
    return config


def _paths_under_target(config: Config) -> tuple[Config, list[str]]:
    """sai3-bench lets an op's path be a whole URI under the target
    (``file:///mnt/a/data/*``): made relative here, like ``base_uri``."""
    lines = []
    ops = list(config.workload)
    for i, op in enumerate(ops):
        if "://" in op.path:
            try:
                ops[i] = attrs.evolve(op, path=relative_to_target(config.target, op.path))
            except ValueError as exc:
                lines.append(f"workload[{i}].path: {exc}")
    return attrs.evolve(config, workload=tuple(ops)), lines


def config_to_dict(config: Config, *, human: bool = False) -> dict[str, Any]:
    """The config as plain data that ``config_from_dict`` reads back to an equal config.

    The wire form (CONFIGURE) writes sizes as integers and durations as ``"<n>ns"``; with
    ``human`` (config.yaml as run) both are in the units people write (16KiB, 1m30s), fixed
    sizes as ``object_size`` and whole weights as integers, still exact."""
    return _unstructure(config, human)


def _unstructure(config: Config, human: bool) -> dict[str, Any]:
    def size(n: int) -> Any:
        return exact_size(n) if human else n

    def size_spec(spec: SizeSpec) -> Any:
        if spec.kind == "fixed":
            return size(spec.size)
        if spec.kind == "uniform":
            return {"type": "uniform", "min": size(spec.min), "max": size(spec.max)}
        return {
            "type": "lognormal",
            "mean": size(spec.mean),
            "std_dev": size(spec.std_dev),
            "min": size(spec.min),
            "max": size(spec.max),
        }

    def sized(spec: SizeSpec) -> dict[str, Any]:
        if human and spec.kind == "fixed":
            return {"object_size": size_spec(spec)}
        return {"size_spec": size_spec(spec)}

    def duration(ns: int) -> str:
        return exact_duration(ns) if human else f"{ns}ns"

    def weight(w: float) -> float | int:
        return int(w) if human and w == int(w) else w

    out: dict[str, Any] = {
        "target": config.target,
        "duration": duration(config.duration),
        "concurrency": config.concurrency,
        "warmup": duration(config.warmup),
        "workload": [
            {
                "op": op.op,
                "path": op.path,
                "weight": weight(op.weight),
                **(sized(op.size) if op.size else {}),
                **({"block_size": size(op.block_size)} if op.block_size is not None else {}),
                **({"access": op.access} if op.access != "random" else {}),
                **({"concurrency": op.concurrency} if op.concurrency is not None else {}),
                **(_pattern(op, weight) if op.op == "put" else {}),
                **(
                    {"use_multi_endpoint": op.use_multi_endpoint}
                    if op.use_multi_endpoint is not None
                    else {}
                ),
            }
            for op in config.workload
        ],
        "prepare": {
            "ensure_objects": [
                {
                    "base_uri": e.base_uri,
                    "count": e.count,
                    **sized(e.size),
                    **_pattern(e, weight),
                    **(
                        {"use_multi_endpoint": e.use_multi_endpoint}
                        if e.use_multi_endpoint is not None
                        else {}
                    ),
                }
                for e in config.prepare.ensure_objects
            ],
            "cleanup": config.prepare.cleanup,
            "cleanup_on_abort": duration(config.prepare.cleanup_on_abort),
            "post_prepare_delay": duration(config.prepare.post_prepare_delay),
            "prepare_strategy": config.prepare.prepare_strategy,
            "skip_verification": config.prepare.skip_verification,
            "force_overwrite": config.prepare.force_overwrite,
            **(
                {"directory_structure": attrs.asdict(config.prepare.directory_structure)}
                if config.prepare.directory_structure is not None
                else {}
            ),
        },
        "distributed": {
            "agents": [
                {
                    "address": a.address,
                    **({"id": a.id} if a.id else {}),
                    **(
                        {"concurrency_override": a.concurrency_override}
                        if a.concurrency_override is not None
                        else {}
                    ),
                    **({"target_override": a.target_override} if a.target_override else {}),
                    **(
                        {"multi_endpoint": _spread(a.multi_endpoint)}
                        if a.multi_endpoint is not None
                        else {}
                    ),
                }
                for a in config.distributed.agents
            ]
            + [
                {
                    "ssh": a.ssh,
                    **({"processes": a.processes} if a.processes != 1 else {}),
                    **({"id": a.id} if a.id else {}),
                }
                for a in config.distributed.ssh_agents
            ],
            **(
                {"ssh": _ssh_settings(config.distributed.ssh, duration)}
                if config.distributed.ssh_agents or config.distributed.ssh != SshSettings()
                else {}
            ),
            "shared_storage": config.distributed.shared_storage,
            "path_selection": config.distributed.path_selection,
            "partition_overlap": config.distributed.partition_overlap,
            "failure_policy": config.distributed.failure_policy,
            **{
                f.name: duration(getattr(config.distributed, f.name))
                for f in attrs.fields(Distributed)
                if f.type in (Duration, "Duration")
            },
        },
        "page_cache_mode": config.page_cache_mode,
        "file": {"fsync": config.file.fsync, "buffer_size": size(config.file.buffer_size)},
        "s3": {
            **({"endpoint": config.s3.endpoint} if config.s3.endpoint else {}),
            **({"endpoints": list(config.s3.endpoints)} if config.s3.endpoints else {}),
            **({"region": config.s3.region} if config.s3.region else {}),
            **({"profile": config.s3.profile} if config.s3.profile else {}),
            "addressing": config.s3.addressing,
            "multipart_threshold": size(config.s3.multipart_threshold),
            "part_size": size(config.s3.part_size),
            "verify_tls": config.s3.verify_tls,
            **({"ca_bundle": config.s3.ca_bundle} if config.s3.ca_bundle else {}),
            "timeout": duration(config.s3.timeout),
            "sign_payload": config.s3.sign_payload,
        },
    }
    if config.io_rate is not None:
        out["io_rate"] = {"iops": config.io_rate.iops, "distribution": config.io_rate.distribution}
    if config.multi_endpoint is not None:
        out["multi_endpoint"] = _spread(config.multi_endpoint)
    for key in ("max_errors", "seed", "name"):
        if getattr(config, key) is not None:
            out[key] = getattr(config, key)
    return out


def _spread(spread: MultiEndpoint) -> dict[str, Any]:
    return {"strategy": spread.strategy, "endpoints": list(spread.endpoints)}


def _pattern(entry: EnsureObjects | OpSpec, weight: Any) -> dict[str, Any]:
    return {
        "fill": entry.fill,
        "dedup_factor": weight(entry.dedup_factor),
        "compress_factor": weight(entry.compress_factor),
    }


def _pattern_problems(entry: EnsureObjects | OpSpec, where: str) -> list[str]:
    lines = []
    for key in ("dedup_factor", "compress_factor"):
        if entry.fill == "zero" and getattr(entry, key) != 1:
            lines.append(f"{where}.{key}: has no meaning with fill: zero (all zeros)")
    if entry.compress_factor > MAX_COMPRESS_FACTOR:
        lines.append(
            f"{where}.compress_factor: at most {MAX_COMPRESS_FACTOR} (each 4 KiB block keeps "
            f"16 random bytes), got {entry.compress_factor:g}"
        )
    return lines


def _ssh_settings(ssh: SshSettings, duration: Any) -> dict[str, Any]:
    return {
        **({"user": ssh.user} if ssh.user else {}),
        **({"key": ssh.key} if ssh.key else {}),
        **({"port": ssh.port} if ssh.port else {}),
        **({"options": list(ssh.options)} if ssh.options else {}),
        "command": ssh.command,
        "timeout": duration(ssh.timeout),
    }


_UNSUPPORTED_SCHEMES = {
    "gs": "gs:// (Google Cloud Storage) is not supported; its S3-compatible endpoint works: "
    "s3://bucket/ with s3.endpoint https://storage.googleapis.com and HMAC keys",
    "az": "az:// (Azure Blob Storage) is not supported",
    "azure": "azure:// (Azure Blob Storage) is not supported",
}


def target_problems(uri: str, where: str = "target") -> list[str]:
    """What is wrong with a target URI (or an endpoint, or a target_override)."""
    if not uri:
        return [f"{where}: required field missing"]
    target = urlsplit(uri)
    if target.scheme == "s3":
        lines = []
        if not _BUCKET.match(target.netloc):
            lines.append(
                f"{where}: {show(uri)}: expected s3://bucket/prefix/ with a valid bucket "
                "name (3-63 of a-z 0-9 . -)"
            )
        if target.query or target.fragment or "%" in target.path:
            lines.append(f"{where}: {show(uri)}: '?', '#' and percent-encoding are not supported")
        return lines
    if target.scheme in _UNSUPPORTED_SCHEMES:
        return [f"{where}: {_UNSUPPORTED_SCHEMES[target.scheme]}"]
    if target.scheme not in SCHEMES:
        return [
            f"{where}: unsupported scheme in {show(uri)} "
            f"(expected {', '.join(s + '://' for s in SCHEMES)})"
        ]
    if target.scheme in FILE_SCHEMES and (target.netloc or not target.path.startswith("/")):
        return [f"{where}: {show(uri)} must be {target.scheme}:///absolute/path/"]
    if target.scheme in FILE_SCHEMES and ("%" in target.path or target.query or target.fragment):
        return [
            f"{where}: {show(uri)}: percent-encoding, '?' and '#' are not supported in "
            f"{target.scheme}:// targets; write the path as it is on disk"
        ]
    return []


def s3_endpoint_form(uri: str) -> tuple[str, str] | None:
    """sai3-bench's ``s3://HOST:PORT/bucket/prefix/`` multi-endpoint spelling as (endpoint
    URL, ``s3://bucket/prefix/``); None for an ordinary ``s3://bucket/prefix/``."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        return None
    host = parts.hostname or ""
    if parts.port is None and not re.fullmatch(r"[\d.]+|[0-9a-f:]+|localhost", host):
        return None
    bucket, _, prefix = parts.path.lstrip("/").partition("/")
    scheme = "https" if parts.port == 443 else "http"
    return f"{scheme}://{parts.netloc}", f"s3://{bucket}/{prefix}"


def endpoint_problems(spread: MultiEndpoint, target: str, where: str) -> list[str]:
    """Endpoints must be of the target's kind and, for S3, name the target's bucket and
    prefix (one namespace, several ways to reach it)."""
    lines = []
    scheme = urlsplit(target).scheme
    if not spread.endpoints:
        lines.append(f"{where}.endpoints: needs at least one endpoint")
    for i, uri in enumerate(spread.endpoints):
        here = f"{where}.endpoints[{i}]"
        gateway = s3_endpoint_form(uri)
        if gateway is not None:
            if scheme != "s3" or gateway[1].rstrip("/") != target.rstrip("/"):
                lines.append(
                    f"{here}: {show(uri)} names {gateway[1]}, not the target {show(target)}: "
                    "every endpoint must serve the same bucket and prefix"
                )
            continue
        problems = target_problems(uri, here)
        if problems:
            lines += problems
        elif urlsplit(uri).scheme != scheme:
            lines.append(f"{here}: {show(uri)} is not a {scheme}:// endpoint like the target")
        elif scheme == "s3" and uri.rstrip("/") != target.rstrip("/"):
            lines.append(
                f"{here}: {show(uri)}: several buckets or prefixes are not one namespace; give "
                "s3://HOST:PORT/bucket/prefix/ endpoints (gateways) or use s3.endpoints"
            )
    return lines


def tree_op(config: Config, op: OpSpec) -> bool:
    """Whether ``op`` works on the prepared directory tree: a get or stat whose path is "/"
    (sai3-bench's "the whole tree") or names files in subdirectories (a wildcard before the
    last "/", or **); a put whose path is "/" (new files in the tree's directories)."""
    if config.prepare.directory_structure is None:
        return False
    if op.path == "/":
        return op.op in ("get", "stat", "put", "mkdir", "rmdir")
    head = op.path.rpartition("/")[0]
    return op.op in ("get", "stat") and ("**" in op.path or any(c in head for c in "*?["))


def _directory_op_problems(config: Config, op: OpSpec, where: str) -> list[str]:
    """mkdir makes new directories in its path; rmdir removes those, made by a mkdir on
    the same path in this run (never a directory that was there before)."""
    lines = []
    if any(ch in op.path for ch in "*?["):
        lines.append(f"{where}.path: {op.op} takes a directory, not a pattern")
    if op.recursive:
        lines.append(
            f"{where}.recursive: removing directories with what is in them is not supported"
        )
    if op.op == "rmdir" and not any(
        other.op == "mkdir" and other.path == op.path for other in config.workload
    ):
        lines.append(
            f"{where}: rmdir removes the directories a mkdir on the same path makes; there is "
            f"no mkdir on {show(op.path)}"
        )
    return lines


def tree_base(config: Config) -> str:
    """Where the tree starts, relative to the target ("" or "a/b/")."""
    (entry,) = config.prepare.ensure_objects[:1] or (None,)
    base = relative_to_target(config.target, entry.base_uri) if entry else ""
    return base if not base or base.endswith("/") else base + "/"


def _tree_problems(config: Config) -> list[str]:
    tree = config.prepare.directory_structure
    if tree is None:
        return []
    where = "prepare.directory_structure"
    lines = []
    mask = tree.dir_mask
    if mask.count("%d") != 2 or "/" in mask or "%" in mask.replace("%d", "") or mask in (".", ".."):
        lines.append(
            f"{where}.dir_mask: {show(mask)} must hold two %d (level, position) and no / or other %"
        )
    if tree.directories > MAX_TREE_DIRECTORIES:
        lines.append(
            f"{where}: {tree.directories:,} directories; at most {MAX_TREE_DIRECTORIES:,} "
            "(each agent keeps their names)"
        )
    entries = config.prepare.ensure_objects
    if len(entries) != 1:
        lines.append(
            f"{where}: needs exactly one ensure_objects entry (its base_uri, size and data "
            f"are the tree's files'), got {len(entries)}"
        )
    elif entries[0].count not in (0, tree.files):
        lines.append(
            f"prepare.ensure_objects[0].count: the tree holds {tree.files:,} files "
            f"({tree.file_directories:,} directories x {tree.files_per_dir}); give 0 or that"
        )
    for i, op in enumerate(config.workload):
        if op.path == "/" and not tree_op(config, op):
            lines.append(f"workload[{i}].path: {op.op} on the whole tree is not supported")
    return lines


def spreads(config: Config) -> bool:
    """Whether the run's ops and prepared objects go over ``multi_endpoint``."""
    entries: list[OpSpec | EnsureObjects] = [*config.workload, *config.prepare.ensure_objects]
    return any(entry.use_multi_endpoint for entry in entries)


def prepare_spreads(config: Config) -> bool:
    """Whether prepare (and cleanup of what it made) goes over ``multi_endpoint``."""
    return any(entry.use_multi_endpoint for entry in config.prepare.ensure_objects)


def _spread_mixed(config: Config) -> bool:
    """true beside false within one stage (prepare's entries, or the workload's ops)."""
    return any(
        any(e.use_multi_endpoint for e in entries)
        and any(e.use_multi_endpoint is False for e in entries)
        for entries in (config.workload, config.prepare.ensure_objects)
    )


def _spread_problems(config: Config) -> list[str]:
    lines = []
    if _spread_mixed(config):
        lines.append(
            "use_multi_endpoint: triobench spreads a stage's workers over the endpoints, so "
            "it applies to all the workload's ops or none, and to all prepared sets or none "
            "(false on some, true on others)"
        )
    if config.multi_endpoint is not None:
        lines += endpoint_problems(config.multi_endpoint, config.target, "multi_endpoint")
    for i, agent in enumerate(config.distributed.agents):
        where = f"distributed.agents[{i}]"
        target = agent.target_override or config.target
        if agent.target_override is not None:  # any kind: the agent checks its own config
            lines += target_problems(agent.target_override, f"{where}.target_override")
        if agent.multi_endpoint is not None:
            lines += endpoint_problems(agent.multi_endpoint, target, f"{where}.multi_endpoint")
        if agent.concurrency_override is not None and agent.concurrency_override > MAX_CONCURRENCY:
            lines.append(f"{where}.concurrency_override: at most {MAX_CONCURRENCY}")
    own = any(agent.multi_endpoint for agent in config.distributed.agents)
    if spreads(config) and config.multi_endpoint is None and not own:
        lines.append("use_multi_endpoint: there is no multi_endpoint to spread over")
    return lines


def for_agent(config: Config, address: str) -> Config:
    """The config one agent runs: its entry's overrides (concurrency_override,
    target_override, multi_endpoint) applied, when it has an entry."""
    entry = next((a for a in config.distributed.agents if a.address == address), None)
    if entry is None:
        return config
    changes: dict[str, Any] = {}
    if entry.concurrency_override is not None:
        changes["concurrency"] = entry.concurrency_override
    if entry.target_override is not None:
        changes["target"] = entry.target_override
    if entry.multi_endpoint is not None:
        changes["multi_endpoint"] = entry.multi_endpoint
    return attrs.evolve(config, **changes) if changes else config


def validate(config: Config) -> list[str]:
    """Checks across fields, after the types are right. Returns one line per mistake."""
    lines: list[str] = target_problems(config.target)
    if config.duration < 0:
        lines.append("duration: must not be negative")
    elif config.duration == 0 and config.warmup:
        lines.append("warmup: a run of duration 0 (prepare only) has no workload to warm up")
    if config.concurrency > MAX_CONCURRENCY:
        lines.append(
            f"concurrency: at most {MAX_CONCURRENCY} worker threads per agent, got "
            f"{config.concurrency}; for more, run more agents (triobench agent --processes N)"
        )
    elif config.concurrency * config.file.buffer_size > MAX_BUFFERS and config.scheme in (
        FILE_SCHEMES
    ):
        lines.append(
            f"concurrency: {config.concurrency} workers x file.buffer_size "
            f"{format_size(config.file.buffer_size)} is more than {format_size(MAX_BUFFERS)} "
            "of read buffers per agent; lower one of them"
        )
    if config.max_errors is not None and config.max_errors < 0:
        lines.append(f"max_errors: must be >= 0, got {config.max_errors}")
    if not config.workload:
        lines.append("workload: needs at least one operation")
    elif not any(op.weight > 0 for op in config.workload):
        lines.append("workload: every operation has weight 0; at least one must run")
    for i, entry in enumerate(config.prepare.ensure_objects):
        where = f"prepare.ensure_objects[{i}].base_uri"
        try:
            base = relative_to_target(config.target, entry.base_uri)
            if base:
                check_relative_path(base)
        except ValueError as exc:
            lines.append(f"{where}: {exc}")
        lines += _pattern_problems(entry, f"prepare.ensure_objects[{i}]")
    for i, op in enumerate(config.workload):
        where = f"workload[{i}]"
        in_tree = tree_op(config, op)
        try:
            if not (op.path == "/" and in_tree) and not (op.path == "" and op.op == "put"):
                check_relative_path(op.path)  # ("" for a put: new objects in the target)
        except ValueError as exc:
            lines.append(f"{where}.path: {exc}")
            continue
        if op.op == "put" and op.size is None:
            lines.append(f"{where}: put needs a size (object_size, size_spec or size_distribution)")
        if op.recursive and op.op != "rmdir":
            lines.append(f"{where}.recursive: only rmdir takes it")
        if op.op != "put" and op.size is not None:
            lines.append(f"{where}: {op.op} does not take a size (only put writes objects)")
        if op.op != "put" and (op.fill, op.dedup_factor, op.compress_factor) != (
            "random",
            NO_FACTOR,
            NO_FACTOR,
        ):
            lines.append(
                f"{where}: {op.op} does not take fill, dedup_factor or compress_factor "
                "(only put writes objects)"
            )
        lines += _pattern_problems(op, where)
        if op.op in ("get", "stat", "delete") and not in_tree:
            try:
                _dir, pattern = split_pattern(op.path)
                re.compile(fnmatch.translate(pattern))
            except (ValueError, re.error) as exc:
                lines.append(f"{where}.path: {exc}")
        if in_tree and op.block_size is not None:
            lines.append(f"{where}.block_size: ranged gets in a directory tree are not supported")
        if op.op in ("mkdir", "rmdir"):
            lines += _directory_op_problems(config, op, where)
        if op.op == "put" and any(ch in op.path.removesuffix("*") for ch in "*?["):
            lines.append(f"{where}.path: put writes new objects; its path takes no wildcards")
        if op.concurrency is not None and op.concurrency > MAX_CONCURRENCY:
            lines.append(f"{where}.concurrency: at most {MAX_CONCURRENCY}, got {op.concurrency}")
        if op.access == "sequential" and (op.op != "get" or op.block_size is None):
            lines.append(f"{where}.access: sequential is for a get with block_size")
        if op.block_size is not None and op.op == "put":
            if config.scheme == "s3":
                lines.append(f"{where}.block_size: a put in blocks is for file:// and direct://")
            elif config.scheme == "direct" and op.block_size % DIRECT_ALIGN:
                lines.append(
                    f"{where}.block_size: direct:// writes whole {format_size(DIRECT_ALIGN)} "
                    f"blocks (O_DIRECT); {format_size(op.block_size)} is not a multiple"
                )
            elif op.block_size <= 0:
                lines.append(f"{where}.block_size: must be at least 1 byte")
        elif op.block_size is not None:
            if op.op != "get":
                lines.append(f"{where}.block_size: only get and put take blocks")
            elif op.block_size <= 0:
                lines.append(f"{where}.block_size: must be at least 1 byte")
            elif op.block_size > config.file.buffer_size:
                lines.append(
                    f"{where}.block_size: {format_size(op.block_size)} exceeds the read buffer "
                    f"(file.buffer_size {format_size(config.file.buffer_size)})"
                )
            elif config.scheme == "direct" and op.block_size % DIRECT_ALIGN:
                lines.append(
                    f"{where}.block_size: direct:// reads whole {format_size(DIRECT_ALIGN)} "
                    f"blocks (O_DIRECT); {format_size(op.block_size)} is not a multiple"
                )
    lines += _spread_problems(config)
    lines += _tree_problems(config)
    dist = config.distributed
    lines += agent_problems(dist.agents)
    lines += ssh_problems(dist)
    if not dist.ping_interval < dist.warn_after < dist.dead_after:
        lines.append(
            "distributed: need ping_interval < warn_after < dead_after, got "
            f"{format_duration(dist.ping_interval)}, {format_duration(dist.warn_after)}, "
            f"{format_duration(dist.dead_after)}"
        )
    if dist.orphan_timeout <= dist.dead_after + dist.probe_timeout:
        lines.append(
            "distributed.orphan_timeout: agents must be more patient than the controller: "
            "orphan_timeout must exceed dead_after + probe_timeout"
        )
    s3 = config.s3
    for i, url in enumerate(([s3.endpoint] if s3.endpoint else []) + list(s3.endpoints)):
        parts = urlsplit(url)
        where = (
            "s3.endpoint" if s3.endpoint and i == 0 else f"s3.endpoints[{i - bool(s3.endpoint)}]"
        )
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
        ):
            lines.append(f"{where}: {show(url)} is not an http:// or https:// URL without a path")
    if s3.endpoint and s3.endpoints:
        lines.append("s3: give endpoint or endpoints, not both")
    if s3.part_size < 5 * 1024 * 1024:
        lines.append("s3.part_size: S3 requires parts of at least 5 MiB")
    if s3.multipart_threshold < s3.part_size:
        lines.append("s3.multipart_threshold: must be at least part_size")
    if not 0 <= dist.partition_overlap <= 1:
        lines.append("distributed.partition_overlap: must be between 0 and 1")
    if dist.give_up_after < dist.dead_after:
        lines.append("distributed.give_up_after: must be at least dead_after")
    for name in ("stats_interval", "ping_interval", "probe_timeout", "resend_interval"):
        if getattr(dist, name) <= 0:
            lines.append(f"distributed.{name}: must be longer than 0")
    for name, (low, high) in (
        ("stats_interval", STATS_INTERVAL_RANGE_NS),
        ("orphan_timeout", ORPHAN_TIMEOUT_RANGE_NS),
    ):
        value = getattr(dist, name)
        if 0 < value < low or value > high:
            lines.append(
                f"distributed.{name}: must be between {format_duration(low)} and "
                f"{format_duration(high)}, got {format_duration(value)}"
            )
    return lines


def describe_data(entry: EnsureObjects | OpSpec) -> str:
    """What objects written by ``entry`` hold, e.g. ``random, dedup 3:1, incompressible``."""
    if entry.fill == "zero":
        return "zeros"
    dedup, compress = entry.dedup_factor, entry.compress_factor
    return ", ".join(
        [
            "random",
            "unique" if dedup == NO_FACTOR else f"dedup {dedup:g}:1",
            "incompressible" if compress == NO_FACTOR else f"compress {compress:g}:1",
        ]
    )


def _overrides(agent: AgentAddress) -> str:
    """An agent's own settings, as validate shows them: `` [concurrency 8, 2 endpoints]``."""
    parts = []
    if agent.concurrency_override is not None:
        parts.append(f"concurrency {agent.concurrency_override}")
    if agent.target_override is not None:
        parts.append(f"target {agent.target_override}")
    if agent.multi_endpoint is not None:
        parts.append(f"{len(agent.multi_endpoint.endpoints)} endpoint(s)")
    return f" [{', '.join(parts)}]" if parts else ""


def describe(config: Config) -> str:
    """The resolved plan, for ``triobench validate`` and the start of a run."""
    out = [
        f"target       {config.target}",
        f"duration     {format_duration(config.duration)}"
        + (f" (+ {format_duration(config.warmup)} warmup)" if config.warmup else ""),
        f"concurrency  {config.concurrency} worker thread(s) per agent",
    ]
    if config.io_rate:
        out.append(
            f"io_rate      {config.io_rate.iops:g} ops/s per agent ({config.io_rate.distribution})"
        )
    if config.prepare.ensure_objects:
        out.append("prepare")
        shape = config.prepare.directory_structure
        for e in config.prepare.ensure_objects:
            base = relative_to_target(config.target, e.base_uri)
            names = "the tree's files" if shape else f"{base}{prepared_name(0)}..."
            count = shape.files if shape else e.count
            out.append(f"  {count:,} x {e.size.describe()} ({describe_data(e)}) as {names}")
    tree = config.prepare.directory_structure
    if tree is not None:
        base = tree_base(config)
        out.append(
            f"tree         {tree.width} wide, {tree.depth} deep under {base or 'the target'}: "
            f"{tree.directories:,} directories, {tree.files:,} files "
            f"({tree.files_per_dir} in each {'leaf' if tree.distribution == 'bottom' else 'one'}"
            f"), named {tree.dir_mask}/.../file_NNNNNNNN.dat"
        )
    out.append(f"cleanup      {'yes' if config.prepare.cleanup else 'no'}")
    total = sum(op.weight for op in config.workload)
    out.append("workload")
    for op in config.workload:
        if not op.weight:
            out.append(f"  {'never':>6}  {op.op:<6} {op.path} (weight 0)")
            continue
        size = f" {op.size.describe()} ({describe_data(op)})" if op.size else ""
        if op.block_size is not None:
            size += f" ({format_size(op.block_size)} blocks at random aligned offsets)"
        if op.concurrency is not None:
            size += (
                f" (at most {op.concurrency} in flight)"
                if op.concurrency < config.concurrency
                else f" (concurrency {op.concurrency}: no limit, not below the global "
                f"{config.concurrency})"
            )
        out.append(f"  {op.weight / total:6.1%}  {op.op:<6} {op.path}{size}")
    if config.scheme == "s3":
        s3 = config.s3
        endpoints = [s3.endpoint] if s3.endpoint else list(s3.endpoints)
        out.append(
            "s3           endpoint "
            + (", ".join(endpoints) if endpoints else "from each agent's environment")
            + f"; region {s3.region or 'from the environment'}; {s3.addressing} addressing"
        )
        out.append(
            f"             multipart above {format_size(s3.multipart_threshold)} in parts of "
            f"{format_size(s3.part_size)}; payload {'signed' if s3.sign_payload else 'unsigned'}"
            f"; TLS {'verified' if s3.verify_tls else 'NOT verified'}"
            + (f" against {s3.ca_bundle}" if s3.ca_bundle else "")
            + (f"; profile {s3.profile}" if s3.profile else "")
        )
    if config.multi_endpoint is not None:
        spread = config.multi_endpoint
        out.append(
            f"endpoints    {len(spread.endpoints)} ({spread.strategy}"
            f"{'' if spreads(config) else '; no op or prepared set uses them'}): "
            + ", ".join(spread.endpoints)
        )
    dist = config.distributed
    if dist.agents:
        listed = ", ".join(f"{a.id or '?'}@{a.address}{_overrides(a)}" for a in dist.agents)
        out.append(f"agents       {listed}")
    if dist.ssh_agents:
        hosts = [a.ssh for a in dist.ssh_agents]
        shown = ", ".join(hosts[:6]) + (f", ... ({len(hosts)} hosts)" if len(hosts) > 6 else "")
        count = sum(a.processes for a in dist.ssh_agents)
        out.append(f"over SSH     {count} agent(s) on {shown}: {dist.ssh.command} agent ...")
    storage = "shared (objects split by agent index)" if dist.shared_storage else "per-agent prefix"
    out.append(f"storage      {storage}; failure policy: {dist.failure_policy}")
    if dist.path_selection != "random":
        out.append(
            f"paths        {dist.path_selection}"
            + (
                f" (partition_overlap {dist.partition_overlap:g})"
                if dist.path_selection == "weighted"
                else ""
            )
            + (
                ": the tree's directories are dealt to agents in turn"
                if config.prepare.directory_structure
                else ": no effect without a directory tree"
            )
        )
    if config.prepare.skip_verification or config.prepare.force_overwrite:
        out.append(
            "prepare      "
            + (
                "writes every object, existing or not (force_overwrite)"
                if config.prepare.force_overwrite
                else "assumes every object exists: lists nothing, writes nothing "
                "(skip_verification)"
            )
        )
    for note in config.notes:
        out.append(f"set aside    {note}")
    return "\n".join(out)
