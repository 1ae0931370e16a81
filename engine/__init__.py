"""warmstart's engine: config, data, models, training, the round loop, results and the CLI."""

__version__ = "0.1.0"
