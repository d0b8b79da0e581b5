"""The engine: backends, the training loop of one update, evaluation, progress."""
