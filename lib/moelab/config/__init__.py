"""Configuration: the model and training configs, and the named presets."""
