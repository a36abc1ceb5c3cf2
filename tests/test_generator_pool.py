"""The online loop's generator pool: a dead actor is replaced and its groups sent again, within a budget."""

import os
from pathlib import Path

import pytest

from videoalign_ray.online.generator_pool import GeneratorPool

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_ray")]


def _fake_pool(tmp_path: Path, die_on: int, replacements: int) -> GeneratorPool:
    """A pool whose actors return ``{"prompt_index", "pid"}`` and die (once) on task ``die_on``."""
    import ray

    class FakeGenerator:  # defined here: Ray pickles it by value
        def __init__(self, marker):
            self.marker = marker

        def current_version(self):
            return 0

        def generate(self, task, policy_ref):
            with open(Path(self.marker).with_suffix(".log"), "a") as f:
                f.write(f"{task['prompt_index']}\n")
            if task["prompt_index"] == die_on and not os.path.exists(self.marker):
                Path(self.marker).write_text("died")
                os._exit(1)
            return {"prompt_index": task["prompt_index"], "pid": os.getpid()}

    pool = GeneratorPool(None, str(tmp_path), size=2, use_gpu=False, start_timeout_s=60, task_timeout_s=60,
                         replacements=replacements)
    marker = str(tmp_path / "fault")
    pool._new_actor = lambda: ray.remote(FakeGenerator).options(max_restarts=0, num_cpus=0).remote(marker)
    return pool


def _tasks(n: int) -> list[dict]:
    return [{"round": 1, "prompt_index": i} for i in range(n)]


def test_a_dead_actor_is_replaced_and_its_groups_sent_again(tmp_path):
    pool = _fake_pool(tmp_path, die_on=2, replacements=1)
    first = list(pool.start())
    out = pool.generate(_tasks(6), [None], "round 1 generation")
    assert [r["prompt_index"] for r in out] == list(range(6))  # every group, in task order
    assert pool.replaced == 1
    assert pool.actors[0] is not first[0] and pool.actors[1] is first[1]  # task 2 went to slot 0
    log = (tmp_path / "fault.log").read_text().split()
    assert log.count("2") == 2  # the killed group ran again, once
    assert out[2]["pid"] == out[4]["pid"]  # on the replacement, which also took what the dead actor still held
    pool.close()


def test_a_death_beyond_the_budget_fails_with_the_task_named(tmp_path):
    pool = _fake_pool(tmp_path, die_on=1, replacements=0)
    with pytest.raises(RuntimeError, match=r"generation actor 1 died on round 1 prompt 1 .* replaced 0"):
        pool.generate(_tasks(4), [None], "round 1 generation")
    pool.close()
