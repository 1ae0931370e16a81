"""Where results live: a trial's rows, checkpoints and lock on a local folder or an object store, and their check."""
