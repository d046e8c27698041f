"""Training the project's own small models on its own synthetic renders (no downloads)."""
