"""How a round computes: datasets as device tensors, models, training to convergence, pool scoring, pretraining."""
