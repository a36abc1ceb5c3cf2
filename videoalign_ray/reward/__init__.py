"""VideoReward: the multi-dimensional (VQ, MQ, TA) reward model, its losses and metrics."""
