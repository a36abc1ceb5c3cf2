#!/usr/bin/env python
"""Ground-truth win rates of a trained generator vs another on the synthetic world's held-out prompts.

    python jobs/evaluate_generator.py --policy-weights outputs/flow_dpo/final                # vs the base model
    python jobs/evaluate_generator.py --policy-weights A/final --reference-weights B/final --samples-per-prompt 16
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.experiments.evaluate_generator import EvaluateConfig, run_evaluate

if __name__ == "__main__":
    sys.exit(main_for(EvaluateConfig, run_evaluate, __doc__))
