#!/usr/bin/env python
"""Score videos with VideoReward through Ray Data (data filtering, reject sampling).

    python jobs/score_videos.py --data ../shared/data/unifiedreward-wan/videos --reward-checkpoint outputs/train_reward/final
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.pipelines.score_videos import ScoreVideosConfig, run_score_videos

if __name__ == "__main__":
    sys.exit(main_for(ScoreVideosConfig, run_score_videos, __doc__))
