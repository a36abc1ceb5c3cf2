#!/usr/bin/env python
"""Flow-RWR on Ray: every training video weighted by exp(reward / tau) (paper Eq. 9); same trainer as Flow-DPO.

    python jobs/flow_rwr.py                                   # built-in synthetic data, rewards = MOS columns
    python jobs/flow_rwr.py --data pairs.csv --reward-checkpoint outputs/train_reward/final --reward-weights 0,0,1
    python jobs/flow_rwr.py --objective sft                   # the SFT baseline (chosen videos, w = 1)

Every flag is also a YAML key (``--config run.yaml``); ``--help`` lists them.
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.pipelines.flow_dpo import FlowRWRConfig, run_flow_job

if __name__ == "__main__":
    sys.exit(main_for(FlowRWRConfig, run_flow_job, __doc__))
