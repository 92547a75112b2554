"""Sweeps: a grid of pretraining runs x evaluations, run locally or on SLURM, idempotently."""
