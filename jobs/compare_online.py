#!/usr/bin/env python
"""Flow-GRPO vs the online Flow-DPO loop vs offline Flow-DPO, from the same base at the same number of videos:
held-out ground-truth win rates against each other and the base (synthetic world).

    python jobs/compare_online.py                     # reward on TA, seeds 0 and 1, 4 rounds
    python jobs/compare_online.py --dimension MQ
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.experiments.compare_online import CompareOnlineConfig, run_compare_online

if __name__ == "__main__":
    sys.exit(main_for(CompareOnlineConfig, run_compare_online, __doc__))
