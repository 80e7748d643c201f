"""triobench: a distributed storage I/O benchmark on Trio.

Layers, each importing only the ones before it:

- ``trio_bench.protocol``  sans-IO wire protocol: frames, messages, state machines, clock math.
- ``trio_bench.stats``     mergeable latency histograms and summaries (pure).
- ``trio_bench.config``    the YAML workload configuration (pure).
- ``trio_bench.engine``    the data plane: backends and worker threads driving the storage.
- ``trio_bench.transport`` the protocol over a Trio stream: one reader, one writer, two channels.
- ``trio_bench.agent`` / ``trio_bench.controller``  the two programs.
- ``trio_bench.cli``       the ``triobench`` command.
"""

__version__ = "0.1.0"
