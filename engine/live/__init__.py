"""A live project: rounds whose labels come from the world (an annotator, a stream) instead of a dataset."""
