#!/usr/bin/env python
"""Generate videos with optional Flow-NRG reward guidance (per-dimension weights), scored and logged.

    python jobs/generate.py                                  # held-out world prompts, no guidance
    python jobs/generate.py --latent-reward outputs/latent_reward/final --reward-weights 0.1,0.1,0.8 --guidance-scale 2
    python jobs/generate.py --prompts prompts.txt --reward-endpoint videoreward --guidance-scale 2 --reward-weights 0,0,1

Every flag is also a YAML key (``--config run.yaml``); ``--help`` lists them.
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.pipelines.generate import GenerateConfig, run_generate

if __name__ == "__main__":
    sys.exit(main_for(GenerateConfig, run_generate, __doc__))
