"""What a run is: the registries and their allowed values, the validated config, plugins, and the row schema."""
