"""``jobs/online_dpo.py``: online, iterative Flow-DPO (docs/algorithms.md section 6; paper section 5).

One round = generate (a pool of Ray actors samples K videos per prompt from the current policy) -> score (the
synthetic world's ground truth, or the Ray Serve reward app) -> select (best vs worst weighted reward per
prompt) -> store (``<output_dir>/pairs/round=NNN``, committed atomically) -> train (one Flow-DPO run with the
existing Ray Train job, from the previous round's adapter) -> sync (one ``ray.put`` of the new adapter).

Rerunning the same command resumes: committed rounds are not redone, a finished prompt group is reused by
(round, prompt, seeds, policy version), and a killed training round resumes from its Ray Train checkpoint.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, model_validator

from videoalign_ray.flow.objectives.dpo import DPOSection
from videoalign_ray.online.selection import PairRule
from videoalign_ray.runtime.job import job_run
from videoalign_ray.sections import (
    ModelSection,
    RewardSection,
    RuntimeSection,
    SamplingSection,
    Weights,
    WorldSection,
    parse_weights,
)

log = logging.getLogger(__name__)


class OnlineDPOConfig(RuntimeSection, ModelSection, WorldSection, SamplingSection, RewardSection, DPOSection):
    """Config of ``jobs/online_dpo.py``."""

    placement: Literal["auto", "colocated", "separate"] = Field(
        "auto", description="colocated: one group of --num-workers workers (one GPU each) samples and trains "
        "(Euler sampling, ground-truth or served reward); separate: --generator-actors generation actors and a Ray "
        "Train + DeepSpeed run per round on other GPUs, weights synced through the object store (needed for "
        "Flow-NRG guidance, --reference previous, --replay-rounds); auto: colocated unless one of those is asked.")

    output_dir: str = Field("outputs/online_dpo", description="Samples, pairs/, rounds/, cache, MLflow store.")
    preset: Literal["tiny", "tiny-world", "wan2.1-1.3b"] = Field(
        "tiny-world", description="Generator preset (default: the tiny base pre-trained on the synthetic world).")
    rounds: int = Field(2, ge=1, description="Rounds of generate -> score -> select -> store -> train -> sync.")
    prompts: str | None = Field(None, description="Text file (one prompt per line) or a table; default: the "
                                "synthetic world's train prompts.")
    prompt_column: str = Field("prompt", description="Column of a --prompts table.")
    samples_per_prompt: int = Field(4, ge=2, description="K videos per prompt and round.")
    prompts_per_round: int | None = Field(None, ge=1, description="Colocated: prompts drawn (without replacement) "
                                          "per round; default every prompt every round.")
    generator_actors: int = Field(2, ge=1, description="Generation actors (one GPU each when the cluster has GPUs).")
    sample_steps: int = Field(12, ge=1, description="Denoising steps per generated video.")
    guidance_scale: float = Field(0.0, ge=0, description="Flow-NRG scale during sampling (needs --reward-endpoint).")
    reward_weights: Weights = Field("1,1,1", description="Per-dimension weights (VQ,MQ,TA) of the reward: pair "
                                    "selection and Flow-NRG.")
    guidance_weights: Weights | None = Field(None, description="Per-dimension weights of the Flow-NRG guide while "
                                             "sampling when they should differ from the pair reward's; default: --reward-weights.")
    pair_rule: PairRule = Field(
        "best-worst", description="Pairs per prompt. guided-vs-unguided: half of each prompt's samples with "
        "--guidance-scale, half without from the same seeds, each guided one paired with its unguided twin.")
    min_margin: float = Field(0.0, ge=0, description="Weighted-reward gap below which a pair is not kept.")
    replay_rounds: int = Field(0, ge=0, description="Earlier rounds' pairs added to each round's training.")
    reference: Literal["base", "previous"] = Field(
        "base", description="Flow-DPO reference of each round: the base generator, or the previous round's "
        "policy (a frozen merged copy: one more copy of the base weights in the trainer's memory).")
    steps_per_round: int = Field(20, ge=1, description="Flow-DPO optimizer steps per round.")
    batch_size: int = Field(2, ge=1, description="Pairs per worker per micro-batch.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers per round.")
    lr: float | None = Field(None, gt=0, description="Default from the preset.")
    lora_rank: int | None = Field(None, gt=0, description="Default from the preset.")
    eval_samples_per_prompt: int = Field(2, ge=0, description="Held-out samples per world prompt for the "
                                         "per-round win rate vs the base (0: off).")
    actor_start_timeout_s: float = Field(300.0, gt=0, description="Seconds for the generation actors to load.")
    group_timeout_s: float = Field(1800.0, gt=0, description="Seconds one prompt group may take to generate.")
    train_timeout_s: float = Field(3600.0, gt=0, description="Seconds one round's Flow-DPO training (Ray Train "
                                   "fit: worker start, restarts, steps) may take before the job fails naming it.")
    storage_path: str | None = Field(None, description="Ray Train checkpoints of every round, under "
                                     "<storage_path>/round-NNN (a shared path or s3://...); default in the round's folder.")
    generator_replacements: int = Field(2, ge=0, description="Separate: dead generation actors replaced (and their "
                                        "groups sent again); colocated: worker-group restarts after a worker died "
                                        "(the round redone from the newest finished one); then the job fails.")
    fail_at_round: int | None = Field(None, json_schema_extra={"test_hook": True},
                                      description="Test hook (colocated): the driver exits after this round's pairs.")
    fail_generator_on: str | None = Field(None, json_schema_extra={"test_hook": True},
                                          description="Fault injection for tests: 'ROUND,PROMPT' kills "
                                          "the actor generating it, once (colocated: a worker exits in ROUND, once).")

    @model_validator(mode="after")
    def _guidance_needs_an_endpoint(self) -> OnlineDPOConfig:
        if self.guidance_scale > 0 and not self.reward_endpoint:
            raise ValueError("guidance_scale > 0 guides sampling with a served reward app: give --reward-endpoint "
                             "(the name of a running Serve reward app)")
        if self.pair_rule == "guided-vs-unguided" and (self.guidance_scale <= 0 or self.samples_per_prompt % 2):
            raise ValueError("pair_rule guided-vs-unguided pairs guided with unguided samples: it needs "
                             f"guidance_scale > 0 and an even samples_per_prompt (got {self.guidance_scale:g} and "
                             f"{self.samples_per_prompt})")
        return self

    @property
    def resolved_placement(self) -> str:
        """``colocated`` or ``separate`` (``auto``: separate only for what the colocated loop lacks)."""
        if self.placement != "auto":
            return self.placement
        needs_separate = self.guidance_scale > 0 or self.reference == "previous" or self.replay_rounds > 0
        return "separate" if needs_separate else "colocated"

    @model_validator(mode="after")
    def _colocated_supports(self) -> OnlineDPOConfig:
        if self.placement == "colocated" and (self.guidance_scale > 0 or self.reference == "previous"
                                              or self.replay_rounds > 0):
            raise ValueError("placement colocated samples with Euler and no Flow-NRG guide, against the base "
                             "reference, from this round's samples: use --placement separate for --guidance-scale, "
                             "--reference previous or --replay-rounds")
        if self.prompts_per_round is not None and self.resolved_placement == "separate":
            raise ValueError("--prompts-per-round is a colocated option: the separate placement samples every "
                             "prompt every round")
        return self

    @property
    def guide_weights(self) -> tuple[float, float, float]:
        """(VQ, MQ, TA) weights the generation actors guide with: ``guidance_weights``, else ``weights``."""
        return parse_weights(self.guidance_weights or self.reward_weights)

    def effective(self):
        """Preset defaults resolved (lr, LoRA rank, clip size)."""
        from videoalign_ray.pipelines.effective import with_generator_defaults

        return with_generator_defaults(self)


def run_online_dpo(cfg: OnlineDPOConfig) -> dict:
    """Run (or resume) every round; returns the summary (also ``<output_dir>/summary.json``).

    Raises:
        DataError: no usable prompt. RewardServiceError: the reward app kept failing (nothing committed).
        TimeoutError: actors did not start, or a prompt group did not finish, in time.
    """
    cfg = cfg.effective()
    with job_run(cfg, start_ray=True) as job:
        if cfg.resolved_placement == "colocated":
            from videoalign_ray.pipelines.online_dpo_colocated import run_colocated

            return run_colocated(cfg, job)
        from videoalign_ray.pipelines.online_dpo_separate import run_separate

        return run_separate(cfg, job)
