"""The data plane: backends and worker threads that drive the storage, orchestrated from Trio.

``Engine`` is one agent's run session; ``StageRun`` one stage; ``Backend``/``WorkerIO`` the
storage interface (null://, file://). Worker threads never touch Trio; Trio never does
per-operation work.
"""

from trio_bench.stopping import Interrupted, StopFlag

from ._backend import Backend, BackendError, ObjectMissing, WorkerIO, open_backend
from ._engine import Engine
from ._file import FileBackend
from ._null import NullBackend
from ._plan import AgentPlan, OpPlan, Pool, PreparedSet, op_mix
from ._priority import LoopPriority, give_the_loop_priority
from ._stage import STOP_GRACE_S, Progress, StageFailed, StageRun
from ._workers import Worker, WorkloadWorker, record_latency, wait_until

__all__ = [
    "STOP_GRACE_S",
    "AgentPlan",
    "Backend",
    "BackendError",
    "Engine",
    "FileBackend",
    "Interrupted",
    "LoopPriority",
    "NullBackend",
    "ObjectMissing",
    "OpPlan",
    "Pool",
    "PreparedSet",
    "Progress",
    "StageFailed",
    "StageRun",
    "StopFlag",
    "Worker",
    "WorkerIO",
    "WorkloadWorker",
    "give_the_loop_priority",
    "op_mix",
    "open_backend",
    "record_latency",
    "wait_until",
]
