"""The YAML workload configuration (pure: parsing and validation, no I/O beyond reading it)."""

from ._model import (
    OPS,
    AgentAddress,
    Config,
    ConfigError,
    Distributed,
    EnsureObjects,
    FileOptions,
    IoRate,
    OpSpec,
    Prepare,
    SizeSpec,
    check_relative_path,
    config_from_dict,
    config_to_dict,
    describe,
    load_config,
    parse_config,
    prepared_name,
    relative_to_target,
    split_address,
    split_pattern,
)
from ._units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "OPS", "AgentAddress", "Config", "ConfigError", "Distributed", "EnsureObjects",
    "FileOptions", "IoRate", "OpSpec", "Prepare", "SizeSpec", "check_relative_path",
    "config_from_dict", "config_to_dict", "describe", "format_duration", "format_size",
    "load_config", "parse_config", "parse_duration", "parse_size", "prepared_name",
    "relative_to_target", "split_address", "split_pattern",
]
