"""Training: distributed setup, the shared training loop, MAE pretraining, finetuning."""
