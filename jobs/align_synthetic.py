#!/usr/bin/env python
"""Does it actually align? Flow-DPO on synthetic MQ pairs and on TA pairs from the pre-trained tiny-world
base, judged by ground-truth scorers on held-out prompts (the README's table).

    python jobs/align_synthetic.py                 # about 10 minutes on 2 CPU cores
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.experiments.align_proof import AlignProofConfig, run_align_proof

if __name__ == "__main__":
    sys.exit(main_for(AlignProofConfig, run_align_proof, __doc__))
