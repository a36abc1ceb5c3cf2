"""The colocated worker group: ``size`` :class:`~videoalign_ray.online.policy_worker.PolicyWorker` actors on one
placement group (one bundle of 1 GPU + 1 CPU each on a GPU cluster, 1 CPU each otherwise), started once per job.

Every GPU of the group samples and trains in turn; nothing else of the job holds a GPU while the group lives
(its evaluation runs after :meth:`WorkerGroup.close`). Every wait names what it waited for and has a deadline.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class WorkerGroup:
    """Start (:meth:`start`), call (:meth:`call`, one call per worker), account (:attr:`reserved_s`), close.

    Args:
        spec: the workers' :class:`~videoalign_ray.online.policy_worker.PolicySpec`.
        size: workers (GPUs). use_gpu: bundles hold a GPU each. gpu_per_worker: the share of its GPU a
            worker holds (1 - the share a reward replica takes on the same GPU).
        start_timeout_s: seconds for the placement group to be placed and the workers to load and join.
    """

    def __init__(self, spec, *, size: int, use_gpu: bool, start_timeout_s: float, gpu_per_worker: float = 1.0):
        self.spec, self.size, self.use_gpu, self.start_timeout_s = spec, size, use_gpu, start_timeout_s
        self.gpu_per_worker = gpu_per_worker
        self.pg, self.workers, self.info = None, [], []
        self.started_at: float | None = None

    def start(self) -> list[dict]:
        """Place the group, start the workers and join their process group; returns each worker's info.

        Raises:
            TimeoutError: the placement group was not placed (names the bundles it asked for), or the workers
                did not load / join, within ``start_timeout_s``.
        """
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from videoalign_ray.online.policy_worker import PolicyWorker
        from videoalign_ray.runtime.launch import wait_all

        bundle = {"GPU": self.gpu_per_worker, "CPU": 1} if self.use_gpu else {"CPU": 1}
        self.pg = placement_group([dict(bundle) for _ in range(self.size)], strategy="PACK")
        ready, _ = ray.wait([self.pg.ready()], timeout=self.start_timeout_s)
        if not ready:
            raise TimeoutError(f"colocated workers: a placement group of {self.size} x {bundle} was not placed in "
                               f"{self.start_timeout_s:.0f} s (cluster resources: {ray.cluster_resources()})")
        actor = ray.remote(PolicyWorker)
        self.workers = [
            actor.options(num_gpus=bundle.get("GPU", 0), num_cpus=1, max_restarts=0,
                          scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i))
            .remote(self.spec, i, self.size) for i in range(self.size)]
        addr, port = wait_all([self.workers[0].address.remote()], "colocated worker 0 start", self.start_timeout_s)[0]
        self.info = wait_all([w.init_group.remote(addr, port, self.start_timeout_s) for w in self.workers],
                             "colocated workers join their process group", self.start_timeout_s)
        self.started_at = time.monotonic()
        log.info("colocated workers: %d up (%s)", self.size, ", ".join(f"{i['device']}/{i['backend']}" for i in self.info))
        return self.info

    def call(self, method: str, args_per_worker: list[tuple], what: str, timeout_s: float) -> list:
        """``worker.method(*args)`` on every worker at once; results in worker order.

        Raises:
            TimeoutError: a worker did not answer within ``timeout_s`` (names ``what``).
        """
        from videoalign_ray.runtime.launch import wait_all

        refs = [getattr(w, method).remote(*a) for w, a in zip(self.workers, args_per_worker, strict=True)]
        return wait_all(refs, what, timeout_s)

    def call_first(self, method: str, args: tuple, what: str, timeout_s: float):
        """``worker.method(*args)`` on rank 0 only (the workers hold the same weights)."""
        from videoalign_ray.runtime.launch import wait_all

        return wait_all([getattr(self.workers[0], method).remote(*args)], what, timeout_s)[0]

    def broadcast(self, method: str, args: tuple, what: str, timeout_s: float) -> list:
        """The same call on every worker (``args`` put in the object store once)."""
        import ray

        refs = tuple(ray.put(a) if not isinstance(a, (int, float, str, type(None))) else a for a in args)
        return self.call(method, [refs] * self.size, what, timeout_s)

    @property
    def reserved_s(self) -> float:
        """GPU-seconds (worker-seconds on CPU) the group has held since it started."""
        return 0.0 if self.started_at is None else self.size * (time.monotonic() - self.started_at)

    def close(self) -> None:
        """Kill the workers and remove the placement group (its GPUs return to the cluster)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for w in self.workers:
            ray.kill(w)
        self.workers = []
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None
