"""A run on disk: its folders and records, its checkpoints, and the registry of every run."""
