#!/usr/bin/env python
"""Online, iterative Flow-DPO on Ray: generation actors sample from the current policy, a reward scores the
videos, best/worst become fresh on-policy pairs, Flow-DPO trains on them; round after round, resumable.

    python jobs/online_dpo.py                        # embedded default: local Ray, tiny-world, ground-truth reward
    python jobs/online_dpo.py --rounds 3 --reward-checkpoint outputs/train_reward/final   # served VideoReward
    ray job submit --working-dir . -- python jobs/online_dpo.py --generator-actors 4 --reward-endpoint videoreward

Rerunning the same command resumes where it stopped. Every flag is also a YAML key (``--config run.yaml``).
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.pipelines.online_dpo import OnlineDPOConfig, run_online_dpo

if __name__ == "__main__":
    sys.exit(main_for(OnlineDPOConfig, run_online_dpo, __doc__))
