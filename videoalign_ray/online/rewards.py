"""Where an online round's rewards come from: the synthetic world's ground truth (computed where the videos were
sampled, carried in the group records) or the Ray Serve reward app through a DeploymentHandle."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videoalign_ray.runtime.fileio import write_text_atomic

log = logging.getLogger(__name__)
REWARD_APP = "online-reward"


@dataclass
class RewardSource:
    """Scores prompt groups: ``kind`` ``ground-truth`` or ``served`` (``checkpoint``: the app this job deploys
    without an HTTP port, its replicas taking ``gpus`` GPUs each on a GPU cluster; ``endpoint``: a running app).
    Served scores are kept per group beside its mp4s (``pNNNN.reward.json``), so a rerun does not ask again."""

    kind: str
    samples_dir: Path
    checkpoint: str | None = None
    endpoint: str | None = None
    timeout_s: float = 120.0
    attempts: int = 3
    use_gpu: bool = False
    gpus: float = 1.0
    handle: Any = None
    deployed: bool = False

    @classmethod
    def of(cls, cfg, samples_dir: Path, use_gpu: bool) -> RewardSource:
        """From a config with :class:`~videoalign_ray.sections.RewardSection`.

        Raises:
            ConfigError: ``--reward served`` without a checkpoint or endpoint.
        """
        served = cfg.reward == "served" or (cfg.reward == "auto" and (cfg.reward_checkpoint or cfg.reward_endpoint))
        if served and not (cfg.reward_checkpoint or cfg.reward_endpoint):
            from videoalign_ray.errors import ConfigError

            raise ConfigError("--reward served needs --reward-checkpoint or --reward-endpoint")
        return cls(kind="served" if served else "ground-truth", samples_dir=Path(samples_dir),
                   checkpoint=cfg.reward_checkpoint, endpoint=cfg.reward_endpoint, timeout_s=cfg.reward_timeout_s,
                   attempts=cfg.reward_attempts, use_gpu=use_gpu, gpus=1.0 if use_gpu else 0.0)

    def score(self, records: list[dict]) -> list[list[list[float]]]:
        """``(groups, K, 3)`` (VQ, MQ, TA) rewards of the groups' samples, in order.

        Raises:
            KeyError: ground truth asked of a sample without it. RewardServiceError: the app kept failing.
        """
        from videoalign_ray.online.scoring import ground_truth_rewards, served_rewards

        if self.kind == "ground-truth":
            return [ground_truth_rewards(rec) for rec in records]
        out, missing = [None] * len(records), []
        for g, rec in enumerate(records):
            saved = json.loads(f.read_text()) if (f := _saved(rec)).is_file() else None
            if saved and saved["paths"] == [s["path"] for s in rec["samples"]]:
                out[g] = saved["rewards"]
            else:
                missing.append(g)
        if missing:
            items = [(records[g]["prompt"], s["path"]) for g in missing for s in records[g]["samples"]]
            flat = served_rewards(self._handle(), self.endpoint or REWARD_APP, items, timeout_s=self.timeout_s,
                                  attempts=self.attempts)
            n = 0
            for g in missing:
                rec = records[g]
                k = len(rec["samples"])
                out[g], n = flat[n : n + k], n + k
                write_text_atomic(_saved(rec), json.dumps({"paths": [s["path"] for s in rec["samples"]],
                                                           "rewards": out[g]}))
        return out

    def _handle(self):
        from ray import serve

        if self.handle is not None:
            return self.handle
        if self.endpoint:
            try:
                self.handle = serve.get_app_handle(self.endpoint)
            except Exception as exc:  # noqa: BLE001 - Serve raises several types for "not running"
                from videoalign_ray.errors import ConfigError

                raise ConfigError(f"no running Serve app {self.endpoint!r} on this Ray cluster "
                                  f"(start jobs/serve_reward.py and set RAY_ADDRESS to its cluster): {exc}") from exc
            return self.handle
        from videoalign_ray.serve.app import build_app

        serve.start(proxy_location="Disabled")  # handle calls only: no HTTP port
        settings = {"checkpoint": self.checkpoint, "data_roots": [str(self.samples_dir)]}
        autoscaling = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
        self.handle = serve.run(build_app(settings, autoscaling=autoscaling, num_cpus=1 if self.use_gpu else 0,
                                          num_gpus=self.gpus if self.use_gpu else 0),
                                name=REWARD_APP, route_prefix=None)
        self.deployed = True
        return self.handle

    def close(self) -> None:
        """Delete the app this job deployed (an app given by name keeps running)."""
        if self.deployed:
            from ray import serve

            serve.delete(REWARD_APP)
            self.deployed = False


def _saved(rec: dict) -> Path:
    """``pNNNN.reward.json`` beside the group's mp4s."""
    return Path(rec["samples"][0]["path"]).parent / f"p{rec['prompt_index']:04d}.reward.json"
