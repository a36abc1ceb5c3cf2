"""Ray Serve reward application: VideoReward scoring and Flow-NRG guidance behind one deployment."""
