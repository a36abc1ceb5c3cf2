"""Clients of the Serve reward app: the Flow-NRG remote guide (DeploymentHandle) and an HTTP helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class ServeGuide:
    """Flow-NRG guide that calls the ``guide`` method of a running Serve reward app (by app name).

    Same call signature as :class:`videoalign_ray.reward.latent.LatentRewardGuide`. Connects to the running
    Ray cluster (``ray.init(address="auto")``) when this process has no Ray yet.
    """

    def __init__(self, app_name: str):
        import ray
        from ray import serve

        if not ray.is_initialized():
            ray.init(address="auto")
        self.handle = serve.get_app_handle(app_name)

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor,
                 weights: torch.Tensor) -> torch.Tensor:
        grad = self.handle.guide.remote(latents.detach().cpu().float().numpy(), t.detach().cpu().float().numpy(),
                                        prompt_embeds.detach().cpu().float().numpy(),
                                        np.asarray(weights, np.float32)).result()
        return torch.tensor(np.asarray(grad), device=latents.device)  # a copy: the object store's array is read-only


def post_video(client, url: str, video: str | Path | bytes, prompt: str, filename: str = "video.mp4"):
    """``POST /score`` with a multipart upload (``client``: an ``httpx.Client``); returns the response."""
    data = video if isinstance(video, bytes) else Path(video).read_bytes()
    return client.post(f"{url.rstrip('/')}/score", files={"file": (filename, data, "video/mp4")},
                       data={"prompt": prompt})
