#!/usr/bin/env python
"""Flow-GRPO on Ray: one colocated group of workers samples K videos per prompt with SDE steps, the synthetic
world's ground truth scores them, per-prompt normalised advantages train the same workers' LoRA policy; round
after round, resumable.

    python jobs/online_grpo.py                                   # local Ray, tiny-world, 4 rounds
    python jobs/online_grpo.py --reward-weights 0,0,1 --rounds 8  # text alignment only
    ray job submit --working-dir . -- python jobs/online_grpo.py --num-workers 8

Rerunning the same command resumes after the newest finished round. Every flag is also a YAML key.
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.pipelines.online_grpo import OnlineGRPOConfig, run_online_grpo

if __name__ == "__main__":
    sys.exit(main_for(OnlineGRPOConfig, run_online_grpo, __doc__))
