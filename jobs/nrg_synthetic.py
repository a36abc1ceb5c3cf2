#!/usr/bin/env python
"""Flow-NRG on the synthetic world: noisy vs clean latent reward models, per-dimension weight sweeps.

    python jobs/nrg_synthetic.py                      # trains both guides, prints the sweep table
    python jobs/nrg_synthetic.py --guides noisy --guidance-scale 4
"""

import sys

from videoalign_ray.cli import main_for
from videoalign_ray.experiments.nrg_proof import NRGProofConfig, run_nrg_proof

if __name__ == "__main__":
    sys.exit(main_for(NRGProofConfig, run_nrg_proof, __doc__))
