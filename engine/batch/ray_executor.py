"""The Ray executor: the batch's assets on Ray actors, each holding loaded models.

One actor per GPU (``num_gpus=1``) where the cluster has GPUs and the device allows them, else
``workers`` CPU actors with ``threads`` threads each. Each actor runs an :class:`AssetRunner`, so an
actor loads its models once and keeps them for every asset it is given, and writes the asset's files
itself into the output folder (shared storage on a multi-node cluster). An actor that dies (a
crashed process, a lost node) is replaced, and its asset is given once more; a second death fails
that asset alone.

Ray is optional (``pip install partstyle[ray]``) and imported only here, when a batch asks for it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ..allocator import keep_freed_memory
from ..compat import skip_tensor_checks
from ..errors import DependencyError
from .runner import AssetRunner
from .state import AssetOutcome, write_failure

RAY_INSTALL = "pip install 'partstyle[ray]' (or: pip install ray)"
# Where the engine's package lives, for actors started on this machine by a fresh local Ray.
_ENGINE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def import_ray():
    """The ray module, or :class:`DependencyError` with the way to install it."""
    try:
        import ray
    except ImportError:
        raise DependencyError(f"the Ray executor needs Ray, which is not installed; {RAY_INSTALL}.") from None
    return ray


class AssetWorker:
    """The actor's class: an :class:`AssetRunner` in the actor's own process, with its thread count;
    the process keeps freed memory for reuse and skips transformers' in-forward tensor checks, as
    ``python -m engine`` does (:mod:`engine.allocator`, :func:`engine.compat.skip_tensor_checks`)."""

    def __init__(self, models: str, device: str, allow_download: bool, threads: int):
        import torch

        keep_freed_memory()
        skip_tensor_checks()
        torch.set_num_threads(threads)
        self.runner = AssetRunner(models, device=device, allow_download=allow_download)

    def run(self, asset, out_dir: str, fingerprint: str) -> AssetOutcome:
        return self.runner.run(asset, out_dir, fingerprint)


@dataclass
class RoundTrip:
    """One asset as the driver saw it: ``seconds`` from handing it out to its outcome's arrival,
    ``worker_seconds`` inside the worker (rounded to the millisecond); the difference is Ray's
    overhead, plus the worker's own start (its process, imports) for the ``first`` asset a worker
    is given."""

    asset_id: str
    seconds: float
    worker_seconds: float
    first: bool = False


@dataclass
class RayExecutor:
    """Runs a batch on Ray.

    Args:
        address: ``None`` to use the Ray this process already joined (``ray.init`` done by the
            caller), ``"auto"`` for the cluster this machine belongs to or else a new local one, or a
            cluster address (``ray://head:10001``, ``head:6379``).
        models, device, allow_download: as for :class:`AssetRunner`; ``device`` ``auto`` uses GPUs
            where the cluster has them.
        workers: how many actors (default: one per GPU, else the cluster's CPUs // ``threads``).
        threads: CPU threads per actor (its ``num_cpus``).
        worker_class: the actor's class (:class:`AssetWorker` or a subclass of it).
    """

    address: str | None = "auto"
    models: str = "tiny"
    device: str = "auto"
    allow_download: bool = False
    workers: int | None = None
    threads: int = 1
    worker_class: type = AssetWorker
    round_trips: list[RoundTrip] = field(default_factory=list)
    startup_seconds: float = 0.0

    def execute(self, jobs, out_dir, *, on_outcome, on_event, stop, cancel) -> None:
        from .run import AssetEvent

        ray = import_ray()
        started = time.perf_counter()
        owns = self._connect(ray)
        try:
            make, count = self._actor_factory(ray)
            actors = [make() for _ in range(min(count, len(jobs)))]
            self.startup_seconds = time.perf_counter() - started
            queue = list(enumerate(jobs))
            running: dict = {}  # ref -> (actor index, position, planned, attempt, handed out at)
            fresh = set(range(len(actors)))  # actors not given an asset yet

            def hand_out(slot: int, attempt: int = 1, item=None) -> None:
                position, planned = item if item is not None else queue.pop(0)
                on_event(AssetEvent(planned.asset.id, len(self.round_trips), len(jobs)))
                handed = time.perf_counter()  # before the call: the actor may start before .remote() returns
                ref = actors[slot].run.remote(planned.asset, out_dir, planned.fingerprint)
                running[ref] = (slot, position, planned, attempt, handed)

            for slot in range(len(actors)):
                if queue:
                    hand_out(slot)
            while running:
                if cancel.cancelled:  # actors are stopped; their assets' folders keep what they had
                    for actor in actors:
                        ray.kill(actor)
                    for slot, _, planned, _, _ in running.values():
                        on_outcome(AssetOutcome(planned.asset.id, "cancelled", device=f"ray worker {slot}"))
                    return
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                if not ready:
                    continue
                slot, position, planned, attempt, handed = running.pop(ready[0])
                try:
                    outcome = ray.get(ready[0])
                except ray.exceptions.RayTaskError as exc:  # raised inside the worker, past AssetRunner's net
                    outcome = AssetOutcome(planned.asset.id, "failed", round(time.perf_counter() - handed, 3),
                                           f"ray worker {slot}", str(exc).strip().splitlines()[-1])
                    write_failure(os.path.join(out_dir, planned.asset.id), planned.fingerprint, outcome)
                except ray.exceptions.RayError as exc:  # the worker died (a crash, out of memory, a lost node)
                    ray.kill(actors[slot])
                    actors[slot] = make()
                    fresh.add(slot)
                    if attempt == 1:  # a crashed worker: the asset once more, on its replacement
                        hand_out(slot, attempt=2, item=(position, planned))
                        continue
                    outcome = AssetOutcome(planned.asset.id, "failed", round(time.perf_counter() - handed, 3),
                                           f"ray worker {slot}", "the worker running it died twice "
                                           f"({type(exc).__name__}); see the Ray logs of the node")
                    write_failure(os.path.join(out_dir, planned.asset.id), planned.fingerprint, outcome)
                self.round_trips.append(RoundTrip(planned.asset.id, time.perf_counter() - handed, outcome.seconds,
                                                  first=slot in fresh))
                fresh.discard(slot)
                on_outcome(outcome)
                if queue and not stop.cancelled:
                    hand_out(slot)
        finally:
            if owns:
                ray.shutdown()

    def _connect(self, ray) -> bool:
        """Join the cluster; True when this executor started (and so must stop) the Ray runtime."""
        if ray.is_initialized():
            return False
        if self.address is None:
            raise DependencyError("no Ray runtime is running in this process; give --ray auto or an address.")
        ray.init(address=None if self.address == "auto" else self.address, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        return True

    def _actor_factory(self, ray):
        """A function that starts one actor, and how many to start."""
        if self.threads < 1:
            raise DependencyError(f"threads per worker must be 1 or more, not {self.threads}.")
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        use_gpu = gpus > 0 and self.device in ("auto", "cuda")
        count = self.workers or (gpus if use_gpu else max(1, int(resources.get("CPU", 1)) // self.threads))
        path = os.pathsep.join(p for p in (_ENGINE_ROOT, os.environ.get("PYTHONPATH", "")) if p)
        options = {"num_cpus": self.threads, "num_gpus": 1 if use_gpu else 0,
                   "runtime_env": {"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": str(self.threads)}}}
        device = "cuda" if use_gpu else ("cpu" if self.device == "auto" else self.device)
        actor_class = ray.remote(self.worker_class).options(**options)

        def make():
            return actor_class.remote(self.models, device, self.allow_download, self.threads)

        return make, count
