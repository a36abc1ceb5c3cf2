"""``jobs/online_dpo.py`` in the separate placement: generation actors on their own GPUs, and a Flow-DPO job
(Ray Train + DeepSpeed) per round on others, weights synced to the actors through the object store.

Wiring only: the rounds are :class:`videoalign_ray.online.separate_rounds.RoundRunner`'s; this module supplies
their training (:class:`FlowDPORoundTrainer`: each round's ``FlowDPOConfig`` built from the sections the two jobs
share) and runs them.
"""

from __future__ import annotations

from pathlib import Path


class FlowDPORoundTrainer:
    """A round's training as the Flow-DPO job (:func:`videoalign_ray.pipelines.flow_dpo.run_flow_job`), a child
    MLflow run of the online job's; implements ``online.separate_rounds.RoundTrainer``."""

    def __init__(self, runner):
        self.cfg, self.job, self.out, self.model_dir = runner.cfg, runner.job, runner.out, runner.model_dir
        self.use_gpu = runner.use_gpu

    def config(self, r: int, data: str | None, init: Path | None):
        """Round ``r``'s ``FlowDPOConfig``: the model and Flow-DPO sections of the online config, the round's
        steps, seed (``seed + r``), output folder and initial/reference weights."""
        from videoalign_ray.config import validate_config
        from videoalign_ray.flow.objectives.dpo import DPOSection
        from videoalign_ray.online.store import round_dir_name
        from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig
        from videoalign_ray.sections import ModelSection

        cfg = self.cfg
        shared = {k: getattr(cfg, k) for section in (ModelSection, DPOSection) for k in section.model_fields}
        values = dict(
            shared, output_dir=str(self.out / "rounds" / round_dir_name(r) / "train"), data=data,
            model_path=str(self.model_dir),
            max_steps=cfg.steps_per_round, batch_size=cfg.batch_size, num_workers=cfg.num_workers, lr=cfg.lr,
            lora_rank=cfg.lora_rank, seed=cfg.seed + r, checkpoint_every=max(1, cfg.steps_per_round // 2),
            num_samples=0, cache_dir=str(self.out / "cache"), mlflow_tracking_uri=self.job.tracking_uri,
            mlflow_experiment=cfg.mlflow_experiment, run_name=f"round-{r:03d}", log_level=cfg.log_level,
            init_weights=str(init) if init else None, fit_timeout_s=cfg.train_timeout_s, storage_path=cfg.storage_path,
            reference_weights=str(init) if init and cfg.reference == "previous" else None)
        return validate_config(FlowDPOConfig, values)

    def encode_spec(self):
        """The Flow-DPO job's encoding spec; latents in its training dtype, so generated videos share its keys."""
        from videoalign_ray.pipelines.flow_dpo import encode_spec
        from videoalign_ray.runtime.placement import resolve_bf16, use_gpu_default

        flow_cfg = self.config(1, None, None)
        bf16 = resolve_bf16(flow_cfg.precision, use_gpu_default(flow_cfg.use_gpu))
        return encode_spec(flow_cfg, self.model_dir, self.out, self.use_gpu, bf16)

    def fit(self, r: int, data: Path, init: Path | None) -> tuple[Path, dict]:
        """Run round ``r``'s Flow-DPO job; returns its ``final/`` folder and summary."""
        from mlflow.tracking import MlflowClient

        from videoalign_ray.pipelines.flow_dpo import run_flow_job

        summary = run_flow_job(self.config(r, str(data), init))
        MlflowClient(self.job.tracking_uri).set_tag(summary["mlflow_run_id"], "mlflow.parentRunId",
                                                    self.job.tracker.run_id)
        return Path(summary["checkpoint"]), summary


def online_runner(cfg, job):
    """The online DPO job's :class:`~videoalign_ray.online.separate_rounds.RoundRunner` (prompts, reward source,
    encoding spec; the rounds of the separate placement) with the Flow-DPO round trainer."""
    from videoalign_ray.online.separate_rounds import RoundRunner

    return RoundRunner(cfg, job, FlowDPORoundTrainer)


def run_separate(cfg, job) -> dict:
    """Run (or resume) every round of ``cfg`` (an ``OnlineDPOConfig``) in ``job``; returns the summary."""
    from videoalign_ray.data.io import write_rejects
    from videoalign_ray.online.store import PairStore

    runner = online_runner(cfg, job)
    prompts, rejects = runner.load_prompts()
    job.tracker.log_artifact(write_rejects(job.out / "rejects.csv", rejects))
    job.tracker.log_metrics({"prompts": len(prompts), "prompt_rejects": len(rejects)}, step=0)
    store = PairStore(job.out / "pairs")
    history = []
    try:
        for r in range(1, cfg.rounds + 1):
            history.append(runner.run_round(r, prompts, store))
    finally:
        runner.close()
    summary = {"rounds": history, "pairs_dir": str(store.root), "prompts": len(prompts),
               "prompt_rejects": len(rejects), "rejects_csv": str(job.out / "rejects.csv"),
               "final_policy": history[-1]["policy"], "reward": runner.reward_kind, "placement": "separate"}
    return job.complete(summary)
