#!/usr/bin/env python
"""Train VideoReward (BTT, Qwen2-VL backbone) on Ray Train + DeepSpeed.

    python jobs/train_reward.py                        # tiny model on the synthetic world, local Ray
    python jobs/train_reward.py --preset qwen2-vl-2b --model-path /models/Qwen2-VL-2B-Instruct --data train.csv
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.pipelines.train_reward import TrainRewardConfig, run_train_reward

if __name__ == "__main__":
    sys.exit(main_for(TrainRewardConfig, run_train_reward, __doc__))
