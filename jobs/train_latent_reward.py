#!/usr/bin/env python
"""Train the Flow-NRG latent reward model (first K generator blocks + 3-output head) on noisy latents.

    python jobs/train_latent_reward.py                      # synthetic world, tiny-world generator, K = 2
    python jobs/train_latent_reward.py --noise clean        # the paper's ablation (t = 0 only)
    python jobs/train_latent_reward.py --data pairs.csv --preset wan2.1-1.3b --model-path /models/wan --use-gpu true

Every flag is also a YAML key (``--config run.yaml``); ``--help`` lists them.
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.pipelines.train_latent_reward import LatentRewardConfig, run_latent_reward

if __name__ == "__main__":
    sys.exit(main_for(LatentRewardConfig, run_latent_reward, __doc__))
