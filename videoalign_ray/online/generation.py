"""Generation actors of the online loop: sample K videos per prompt from the current policy.

Each actor holds the base generator (transformer, VAE, text encoder) and the policy adapter of one version.
A task is one prompt group (one prompt, its K seeds, sampled as one batch so a rerun reproduces it bit for
bit). For every video the actor writes the mp4 and puts the *generated* latents into the latent cache under
the mp4's cache key (the Flow-DPO job then finds them: no VAE re-encode), then writes the group's record
``p<prompt>.json`` last, atomically: a record on disk means the whole group is done.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from videoalign_ray.flow.sampling import SamplingSettings

if TYPE_CHECKING:
    from videoalign_ray.flow.pipeline import EncodeSpec


@dataclass(frozen=True)
class GeneratorSpec:
    """What every generation actor loads and how it samples (plain values: crosses processes).

    ``encode``: the model folder, latent cache, clip size (frames, pixels) and text length, shared with the
    Flow-DPO job's :class:`~videoalign_ray.flow.pipeline.EncodeSpec` so generated latents land under the keys
    that job looks up. ``fps``: frames per second of the written mp4s. ``sampling``: sampler, steps, shift, CFG and
    negative prompt (the group's guided half samples with Euler: Flow-NRG's rule). ``guide_first_half``: only the first
    half of each group is sampled with guidance (the pair rule ``guided-vs-unguided``; the driver gives the
    second half the same seeds).
    """

    encode: EncodeSpec
    fps: int
    sampling: SamplingSettings = SamplingSettings(steps=20)
    guidance_scale: float = 0.0
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    reward_endpoint: str | None = None
    guide_first_half: bool = False


def group_record_path(samples_dir: str | Path, round_: int, prompt_index: int) -> Path:
    """``<samples_dir>/round=NNN/pNNNN.json``: the record of one prompt group."""
    from videoalign_ray.online.store import round_dir_name

    return Path(samples_dir) / round_dir_name(round_) / f"p{prompt_index:04d}.json"


def load_group_record(path: Path, version: int, seeds: list[int]) -> dict | None:
    """The group's record when it exists, was sampled by policy ``version`` with ``seeds`` and its files are
    all still there; else None (the group is generated again)."""
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    if rec["policy_version"] != version or rec["seeds"] != seeds:
        return None
    from videoalign_ray.data.cache import TensorCache

    cache = TensorCache(rec["cache_dir"])
    ok = all(Path(s["path"]).is_file() and cache.has(s["latent_key"]) for s in rec["samples"])
    return rec if ok else None


class GenerationActor:
    """Ray actor (``ray.remote(GenerationActor)``): samples prompt groups with the policy of one version.

    Version 0 is the base; version v > 0 is the base plus the LoRA adapter trained in round v. The actor
    takes a new version through :meth:`set_policy` (the driver's weight sync) or, after a restart, fetches
    it itself in :meth:`generate` from the object-store reference it is given.
    """

    def __init__(self, spec: GeneratorSpec, samples_dir: str, fault_marker: str | None = None,
                 fail_on: tuple[int, int] | None = None):
        import torch

        from videoalign_ray.data.cache import TensorCache
        from videoalign_ray.flow.generator import load_generator

        enc = spec.encode
        models = load_generator(enc.model_dir, max_text_tokens=enc.max_text_tokens)  # this actor's device, bf16 on CUDA
        self.spec, self.samples_dir, self.device = spec, Path(samples_dir), models.device
        self.transformer, self.vae, self.text = models.transformer, models.vae, models.text
        self.cache = TensorCache(enc.cache_dir)
        self.version, self.lora = 0, None
        self.guide = None
        if spec.guidance_scale > 0 and spec.reward_endpoint:
            from videoalign_ray.serve.client import ServeGuide

            self.guide = ServeGuide(spec.reward_endpoint)
        self.fault_marker, self.fail_on = fault_marker, fail_on
        torch.set_grad_enabled(False)

    def set_policy(self, version: int, policy: dict | None) -> int:
        """Load policy ``version``: ``policy`` is ``{"state": {name: tensor}, "rank": r, "alpha": a}`` (from the
        object store) or None for the base. Returns the version now sampled with."""
        from peft.utils import set_peft_model_state_dict

        from videoalign_ray.flow.model import add_lora

        if policy is None:
            if self.lora is not None:
                self.transformer.disable_adapters()
        else:
            if self.lora is None:
                add_lora(self.transformer, policy["rank"], policy["alpha"], seed=0)
                self.lora = (policy["rank"], policy["alpha"])
            elif self.lora != (policy["rank"], policy["alpha"]):
                raise ValueError(f"adapter rank/alpha changed from {self.lora} to {(policy['rank'], policy['alpha'])}")
            result = set_peft_model_state_dict(self.transformer, policy["state"])
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"adapter has keys the model lacks: {result.unexpected_keys[:5]}")
            self.transformer.enable_adapters()
        self.transformer.eval()
        self.version = version
        return version

    def current_version(self) -> int:
        """The policy version this actor samples with."""
        return self.version

    def generate(self, task: dict, policy_ref: list) -> dict:
        """Sample one prompt group and write its files; returns the group record.

        ``task``: ``{round, prompt_index, prompt, seeds, version, scene}`` (``scene``: the synthetic-world
        scene as a dict for ground-truth scores, or None). ``policy_ref``: ``[ObjectRef]`` of that version's
        policy (wrapped in a list so Ray does not fetch it unless this actor needs it).
        """
        import ray
        import torch

        from videoalign_ray.data.cache import prompt_key, put_unpadded
        from videoalign_ray.data.encode import write_mp4
        from videoalign_ray.flow.model import decode_latents
        from videoalign_ray.flow.sampling import latent_shape, sample_latents
        from videoalign_ray.runtime.fileio import write_text_atomic

        round_, idx, version = task["round"], task["prompt_index"], task["version"]
        folder = group_record_path(self.samples_dir, round_, idx).parent
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "attempts.log", "a") as f:  # one short append per start: who generated what, how often
            f.write(f"{idx}\t{os.getpid()}\n")
        self._maybe_fail(round_, idx)
        if self.version != version:
            self.set_policy(version, ray.get(policy_ref[0]) if version > 0 else None)
        spec, enc = self.spec, self.spec.encode
        shape = latent_shape(self.vae.config, enc.num_frames, enc.height, enc.width)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in task["seeds"]])
        embeds = self.text.encode([task["prompt"]] * len(task["seeds"]))
        # the training job's prompt-embedding cache entry too: its run then starts no text-encoder actor
        put_unpadded(self.cache, prompt_key(task["prompt"], enc.text_encoder_id, enc.max_text_tokens), embeds[0])
        # guided-vs-unguided: the first half with guidance, the second half (the same seeds) without it
        h = len(noise) // 2
        parts = [(slice(0, h), self.guide), (slice(h, None), None)] if spec.guide_first_half else [(slice(None), self.guide)]
        negative = spec.sampling.negative_embeds(self.text, len(noise))
        latents = torch.cat([
            sample_latents(self.transformer, embeds[s], noise[s], reward_guide=guide,
                           reward_weights=tuple(spec.weights), reward_scale=spec.guidance_scale,
                           negative_embeds=negative[s] if negative is not None else None,
                           **spec.sampling.kwargs(enc.model_dir, reward_guidance=guide is not None
                                                  and spec.guidance_scale > 0)).float().cpu()
            for s, guide in parts])
        videos = decode_latents(self.vae, latents)
        samples = []
        for k, (seed, video) in enumerate(zip(task["seeds"], videos, strict=True)):
            path = write_mp4(folder / f"p{idx:04d}_s{k:02d}.mp4", video, fps=spec.fps)
            key = enc.video_key(str(path))
            self.cache.put(key, latents[k].to(getattr(torch, enc.latent_dtype)))
            sample = {"sample": k, "seed": seed, "path": str(path), "latent_key": key}
            if task.get("scene"):
                from videoalign_ray.synthetic.scorers import score_video
                from videoalign_ray.synthetic.world import Scene

                sample["ground_truth"] = score_video(video, Scene(**task["scene"]))
            samples.append(sample)
        record = {"round": round_, "prompt_index": idx, "prompt": task["prompt"], "seeds": list(task["seeds"]),
                  "policy_version": self.version, "cache_dir": enc.cache_dir, "samples": samples,
                  "spec": {k: v for k, v in asdict(spec).items() if k in ("sampling", "guidance_scale",
                                                                         "weights", "guide_first_half")}}
        write_text_atomic(group_record_path(self.samples_dir, round_, idx), json.dumps(record, indent=1))
        return record

    def _maybe_fail(self, round_: int, prompt_index: int) -> None:
        """Fault injection for tests: die once (the marker file records it) on the given (round, prompt)."""
        if self.fail_on is None or (round_, prompt_index) != tuple(self.fail_on) or not self.fault_marker:
            return
        marker = Path(self.fault_marker)
        if marker.exists():
            return
        marker.write_text(f"actor pid {os.getpid()} killed on round {round_} prompt {prompt_index}\n")
        # Let the reply of this actor's previous task leave first: an exit within milliseconds of it loses that
        # reply, Ray retries the finished task too (seen: the group before the killed one generated twice), and
        # the test could no longer tell a retried group from a redone one.
        time.sleep(1.0)
        os._exit(1)
