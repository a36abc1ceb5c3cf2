"""The synthetic world: a procedural video world with known VQ/MQ/TA knobs, its ground-truth scorers,
and the evaluation of generators against them (win rates). Used as the default dataset of every job."""
