"""One module per job: its typed config and its ``run_*`` function (orchestration only, no math).
``jobs/*.py`` are one-line entry points over these."""
