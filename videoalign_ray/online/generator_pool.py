"""The online loop's pool of generation actors, with its own recovery from an actor's death.

Ray's actor-task retries are not used: an actor that dies is replaced by a fresh one (a bounded number of
times per job), and the groups it held are sent again, to the replacement. Doing it here keeps every retry
visible (a log line each) and avoids Ray's retry of a task whose reply was lost with the process, which in
CI once surfaced as "object whose owner is unknown" in ``ray.wait``.
"""

from __future__ import annotations

import itertools
import logging
import time

log = logging.getLogger(__name__)


class GeneratorPool:
    """``size`` :class:`~videoalign_ray.online.generation.GenerationActor` s, created on first use.

    Args:
        spec, samples_dir, fault_marker, fail_on: passed to every actor (see ``GenerationActor``).
        size: actors in the pool.
        use_gpu: one GPU and one CPU per actor; on CPU the actors reserve no CPU (the Flow-DPO workers of the
            same job can start while they sit idle).
        start_timeout_s: seconds an actor may take to load (start and replacement).
        task_timeout_s: seconds without any group finishing before :meth:`generate` fails.
        replacements: dead actors this pool replaces over its life before it gives up.
    """

    def __init__(self, spec, samples_dir: str, *, size: int, use_gpu: bool, start_timeout_s: float,
                 task_timeout_s: float, replacements: int = 2, fault_marker: str | None = None,
                 fail_on: tuple[int, int] | None = None):
        self.spec, self.samples_dir, self.size, self.use_gpu = spec, samples_dir, size, use_gpu
        self.start_timeout_s, self.task_timeout_s = start_timeout_s, task_timeout_s
        self.replacements_left, self.replaced = replacements, 0
        self.fault_marker, self.fail_on = fault_marker, fail_on
        self.actors: list | None = None

    def _new_actor(self):
        import ray

        from videoalign_ray.online.generation import GenerationActor

        options = dict(num_gpus=1, num_cpus=1) if self.use_gpu else dict(num_cpus=0)
        return ray.remote(GenerationActor).options(max_restarts=0, **options).remote(
            self.spec, self.samples_dir, self.fault_marker, self.fail_on)

    def start(self) -> list:
        """The live actors (started and loaded on the first call).

        Raises:
            TimeoutError: an actor did not load within ``start_timeout_s``.
        """
        from videoalign_ray.runtime.launch import wait_all

        if self.actors is None:
            self.actors = [self._new_actor() for _ in range(self.size)]
            wait_all([a.current_version.remote() for a in self.actors], "generation actors start",
                     self.start_timeout_s)
        return self.actors

    def generate(self, tasks: list[dict], policy_ref, what: str) -> list[dict]:
        """Group records of ``tasks`` (in order), spread round-robin over the actors.

        ``policy_ref``: ``[ObjectRef | None]`` of the tasks' policy version. When an actor dies, every group it
        still held (the one it died on and those queued behind it) goes to its replacement, in the order it
        was first sent.

        Raises:
            TimeoutError: no group finished within ``task_timeout_s``.
            RuntimeError: an actor died after the pool used up its replacements (names the group it died on).
        """
        import ray
        from ray.exceptions import RayActorError

        actors = self.start()
        pending: dict = {}  # ref -> (task index, actor slot, actor handle, submission number)
        sent = itertools.count()

        def submit(i: int, slot: int) -> None:
            actor = self.actors[slot]
            pending[actor.generate.remote(tasks[i], policy_ref)] = (i, slot, actor, next(sent))

        for i in range(len(tasks)):
            submit(i, i % len(actors))
        results, start = [None] * len(tasks), time.monotonic()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.task_timeout_s)
            if not ready:
                raise TimeoutError(f"{what}: no prompt group finished in {self.task_timeout_s:.0f} s "
                                   f"({len(pending)} of {len(tasks)} left)")
            entry = pending.pop(ready[0])
            try:
                results[entry[0]] = ray.get(ready[0])
            except RayActorError as e:
                redo = [entry, *self._collect_held(entry[2], pending, results)]
                redo.sort(key=lambda x: x[3])
                self._replace(entry[1], tasks[redo[0][0]], e, len(redo))
                for i, slot, _, _ in redo:
                    submit(i, slot)
                continue
            done = sum(r is not None for r in results)
            if done == len(tasks) or done % max(1, len(tasks) // 4) == 0:
                log.info("%s: %d/%d groups done (%.1f s)", what, done, len(tasks), time.monotonic() - start)
        return results

    @staticmethod
    def _collect_held(actor, pending: dict, results: list) -> list:
        """Take ``actor``'s other refs out of ``pending``: a finished one's record goes into ``results``, the
        rest (failed, or never to finish on a dead actor) are returned to be sent again."""
        import ray
        from ray.exceptions import RayActorError

        held = []
        for ref in [r for r, v in pending.items() if v[2] is actor]:
            entry = pending.pop(ref)
            if ray.wait([ref], timeout=0)[0]:
                try:
                    results[entry[0]] = ray.get(ref)
                    continue
                except RayActorError:
                    pass
            held.append(entry)
        return held

    def _replace(self, slot: int, task: dict, error: Exception, groups: int) -> None:
        """Kill the actor in ``slot`` (it may only be unreachable) and start its replacement."""
        import ray

        from videoalign_ray.runtime.launch import wait_all

        where = f"round {task['round']} prompt {task['prompt_index']}"
        ray.kill(self.actors[slot], no_restart=True)
        if self.replacements_left <= 0:
            raise RuntimeError(f"generation actor {slot} died on {where} and the pool has replaced "
                               f"{self.replaced} actors already: {type(error).__name__}: {error}") from error
        self.replacements_left -= 1
        self.replaced += 1
        log.warning("generation actor %d died on %s (%s); starting a replacement, %d group(s) sent again",
                    slot, where, type(error).__name__, groups)
        self.actors[slot] = self._new_actor()
        wait_all([self.actors[slot].current_version.remote()], "replacement generation actor start",
                 self.start_timeout_s)

    def set_policy(self, version: int, policy_ref) -> list[int]:
        """Load ``version`` (``policy_ref``: ObjectRef of its payload) on every live actor; their versions."""
        from videoalign_ray.runtime.launch import wait_all

        if self.actors is None:
            return []
        return wait_all([a.set_policy.remote(version, policy_ref) for a in self.actors],
                        f"policy {version} weight sync", self.start_timeout_s)

    def close(self) -> None:
        """Kill the actors (a later :meth:`start` creates new ones)."""
        import ray

        for a in self.actors or []:
            ray.kill(a)
        self.actors = None
