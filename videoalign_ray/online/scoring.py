"""Scoring the online samples: the synthetic world's ground truth, or the Ray Serve reward app.

The served path calls the app's ``score`` method through a DeploymentHandle (a path inside the app's data
roots), every video of a round concurrently, each call with a timeout and bounded retries (tenacity). A
call that still fails raises :class:`RewardServiceError` naming the app and the video; the caller then
commits nothing of the round.
"""

from __future__ import annotations

import logging

from videoalign_ray.data.schema import DIMENSIONS

log = logging.getLogger(__name__)


class RewardServiceError(RuntimeError):
    """The reward app did not answer (or kept failing) for a video after the retries."""


def ground_truth_rewards(record: dict) -> list[list[float]]:
    """``(K, 3)`` rewards (VQ, MQ, TA) of a group record's samples from their ground-truth scores.

    Raises:
        KeyError: a sample without ground truth (its prompt is not a world prompt).
    """
    return [[s["ground_truth"][d] for d in DIMENSIONS] for s in record["samples"]]


def served_rewards(handle, app_name: str, items: list[tuple[str, str]], *, timeout_s: float,
                   attempts: int) -> list[list[float]]:
    """Score ``items`` ``[(prompt, path)]`` through the app's handle; returns ``(N, 3)`` rewards in order.

    Raises:
        RewardServiceError: a call failed ``attempts`` times or timed out each time (app and video named).
    """
    from tenacity import RetryError, Retrying, stop_after_attempt, wait_exponential

    responses = [handle.score.remote(prompt=p, path=v) for p, v in items]
    out = []
    for (prompt, path), first in zip(items, responses, strict=True):
        pending = [first]

        def call(prompt=prompt, path=path, pending=pending):
            resp = pending.pop() if pending else handle.score.remote(prompt=prompt, path=path)
            return resp.result(timeout_s=timeout_s)

        try:
            for attempt in Retrying(stop=stop_after_attempt(attempts), wait=wait_exponential(0.5, max=5),
                                    reraise=False):
                with attempt:
                    scores = call()
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise RewardServiceError(
                f"reward app {app_name!r} failed on {path} after {attempts} attempts "
                f"(timeout {timeout_s:.0f} s each): {type(cause).__name__}: {cause}") from cause
        out.append([float(scores[d]) for d in DIMENSIONS])
    return out
