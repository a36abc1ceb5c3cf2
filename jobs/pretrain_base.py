#!/usr/bin/env python
"""Pre-train the tiny generator on the synthetic world (plain flow matching on good and bad videos alike),
then export it as a diffusers-format folder: the ``tiny-world`` preset.

    python jobs/pretrain_base.py                                   # writes outputs/pretrain_base/tiny_world_base
    python jobs/pretrain_base.py --export-dir videoalign_ray/assets/tiny_world_base   # refresh the asset
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.experiments.pretrain_base import PretrainConfig, run_pretrain

if __name__ == "__main__":
    sys.exit(main_for(PretrainConfig, run_pretrain, __doc__))
