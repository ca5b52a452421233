"""A multi-node Ray cluster on one machine, and a meter of each node's memory and I/O.

Not a benchmark itself (the leading underscore keeps it out of the list in the README).

Each simulated node is a real raylet with its own logical CPUs and object store
(``ray.cluster_utils.Cluster``); the head holds no CPUs (as KubeRay's head is usually
run), so every task and actor lands on a worker node. The meter samples, per node, the
proportional set size (PSS: shared object-store pages counted once) of the raylet and
every process under it, and the bytes its processes read and wrote (``/proc/PID/io``
``rchar + wchar``: sockets, pipes and files).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Workers use this interpreter as it is, not a `uv run` environment of their own per job.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

GB = 1024**3


TEMP_DIR = "/tmp/ray-scale-out"
"""Its own Ray temp dir, so its sessions and logs stay apart from other Rays on the machine."""


def _unpublish(address: str) -> None:
    """Drop the address ``Cluster`` writes to ``/tmp/ray/ray_current_cluster`` (whatever
    its temp dir): while it is there, every plain ``ray.init()`` on this machine joins
    this cluster instead of starting its own."""
    from ray._private.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    if path.exists() and path.read_text().strip() == address:
        path.unlink()


def start_cluster(nodes: int, *, cpus_per_node: int, object_store_bytes: int) -> tuple[Any, list[Any]]:
    """A head with no CPUs plus ``nodes`` worker nodes; this process connected as the driver."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "object_store_memory": 100 * 1024**2,
            "include_dashboard": False,
            "temp_dir": TEMP_DIR,
        },
    )
    workers = [
        cluster.add_node(num_cpus=cpus_per_node, object_store_memory=object_store_bytes, temp_dir=TEMP_DIR)
        for _ in range(nodes)
    ]
    _unpublish(cluster.gcs_address)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster, workers


def stop_cluster(cluster: Any) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()


def raylet_pid(node: Any) -> int:
    """The pid of a ``cluster_utils`` node's raylet (its workers are its children)."""
    return node.all_processes["raylet"][0].process.pid


@dataclass
class _Track:
    peak_bytes: int = 0
    io_first: dict[int, int] = field(default_factory=dict)
    io_last: dict[int, int] = field(default_factory=dict)

    @property
    def io_bytes(self) -> int:
        return sum(self.io_last[pid] - self.io_first[pid] for pid in self.io_last)


class Meter:
    """Peak PSS and I/O bytes per named process tree, sampled every ``interval`` seconds.

    Args:
        roots: name → root pid; a tree is the root and all its descendants (``children=False``
            for this process alone, e.g. the driver, whose Ray threads are in it).
    """

    def __init__(self, roots: dict[str, int], *, interval: float = 0.5, children: bool = True) -> None:
        self.roots = roots
        self.interval = interval
        self.children = children
        self.tracks = {name: _Track() for name in roots}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Meter:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for name, pid in self.roots.items():
            track = self.tracks[name]
            try:
                root = psutil.Process(pid)
                procs = [root, *(root.children(recursive=True) if self.children else ())]
            except psutil.Error:
                continue
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_full_info().pss
                    io = proc.io_counters()
                except psutil.Error:
                    continue
                moved = io.read_chars + io.write_chars
                track.io_first.setdefault(proc.pid, moved)
                track.io_last[proc.pid] = moved
            track.peak_bytes = max(track.peak_bytes, total)

    def peak_gb(self, name: str) -> float:
        return round(self.tracks[name].peak_bytes / GB, 3)

    def io_mb(self, name: str) -> float:
        return round(self.tracks[name].io_bytes / 1024**2, 1)
