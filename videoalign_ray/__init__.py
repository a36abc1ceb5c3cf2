"""videoalign-ray: Ray-distributed RLHF for text-to-video flow-matching generators.

Implements the VideoAlign pipeline (Liu et al., "Improving Video Generation with Human Feedback",
arXiv 2501.13918): preference data, VideoReward, Flow-DPO / Flow-RWR training and Flow-NRG guidance.
"""

__version__ = "0.1.0"
