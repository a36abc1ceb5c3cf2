"""Experiments on the synthetic world that run the pipelines: pre-training the tiny-world base, the
alignment and NRG proofs, the SFT/RWR/DPO comparison, generator evaluation."""
