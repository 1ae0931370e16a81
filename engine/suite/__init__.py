"""Many trials: suite files, Ray Tune (grid, search, schedulers), trial packing, experiment trackers."""
