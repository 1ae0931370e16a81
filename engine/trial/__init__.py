"""One trial: set-up, resume, the round loop, and running it in-process or on a Ray Train worker group."""
