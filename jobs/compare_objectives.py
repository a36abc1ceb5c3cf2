#!/usr/bin/env python
"""SFT vs Flow-RWR vs Flow-DPO from the same base on the same synthetic pairs: ground-truth win rates against
the base on held-out prompts (paper Table 3 in miniature).

    python jobs/compare_objectives.py                 # aligns TA, 200 steps each
    python jobs/compare_objectives.py --dimension MQ --max-steps 300
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.experiments.compare_objectives import CompareObjectivesConfig, run_compare_objectives

if __name__ == "__main__":
    sys.exit(main_for(CompareObjectivesConfig, run_compare_objectives, __doc__))
