#!/usr/bin/env python
"""Flow-DPO on Ray: preference pairs -> aligned flow-matching video generator.

    python jobs/flow_dpo.py                       # embedded default: local Ray, tiny preset, built-in data
    python jobs/flow_dpo.py --data ../shared/data/videoalign-examples/example.csv --max-steps 20
    ray job submit --working-dir . -- python jobs/flow_dpo.py --num-workers 4 --preset wan2.1-1.3b --model-path /models/wan

Every flag is also a YAML key (``--config run.yaml``); ``--help`` lists them.
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig, run_flow_job

if __name__ == "__main__":
    sys.exit(main_for(FlowDPOConfig, run_flow_job, __doc__))
