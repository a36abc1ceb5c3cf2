#!/usr/bin/env python
"""Serve VideoReward (and optionally the Flow-NRG latent reward) on Ray Serve: batched, autoscaling, 127.0.0.1.

    python jobs/serve_reward.py --reward-checkpoint outputs/train_reward/final --data-roots ../shared/data
    python jobs/serve_reward.py --reward-checkpoint ... --latent-reward outputs/latent_reward/final   # adds guide()
    serve run cluster/serve_reward.yaml        # the same app from a Serve config file

Every flag is also a YAML key (``--config run.yaml``); ``--help`` lists them.
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.pipelines.serve_reward import ServeRewardConfig, run_serve_reward

if __name__ == "__main__":
    sys.exit(main_for(ServeRewardConfig, run_serve_reward, __doc__))
