"""The life of a run around the training and evaluation loops of trainer.py, one concern a module:

- `launch`: one process per device (spawned, or joined under torchrun), its process group and process-wide settings;
- `stopping`: stop signals (the first stops at a safe point, a second stops at once);
- `run_directory`: the run's folder (claim, lock, overwrite, stale files) and what it writes (config, log,
  metrics, provenance, wandb);
- `checkpoints`: what a checkpoint holds, writing, linking and pruning them, resuming from one;
- `loaders`: DataLoaders whose unreadable samples are reported in one line;
- `run_config`: the one way to build a run's config from a YAML file, flags and `--set` overrides;
- `arguments`: the command-line flags the front ends share;
- `provenance`: the code version and environment a run records.
"""
