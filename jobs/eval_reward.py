#!/usr/bin/env python
"""Evaluate a VideoReward checkpoint with the VideoGen-RewardBench protocol (accuracy with and without ties).

    python jobs/eval_reward.py --reward-checkpoint outputs/train_reward/final             # synthetic held-out pairs
    python jobs/eval_reward.py --data ../shared/data/fetv/pairs.csv --reward-checkpoint outputs/train_reward/final
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.pipelines.eval_reward import EvalRewardConfig, run_eval_reward

if __name__ == "__main__":
    sys.exit(main_for(EvalRewardConfig, run_eval_reward, __doc__))
