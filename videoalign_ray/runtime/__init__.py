"""Shared Ray / DeepSpeed / MLflow machinery: start or join Ray, the TorchTrainer, the step driver (resume,
deterministic batches), DeepSpeed config and checkpoints, tracking, atomic files, the job skeleton.

Nothing here knows about flows or rewards; every other package may import it."""
