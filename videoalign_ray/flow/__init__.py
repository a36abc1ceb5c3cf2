"""The flow-matching generator and its alignment: presets, schedule, losses (SFT, Flow-DPO, Flow-RWR), NRG guidance, sampling, latents pipeline, the training loop."""
