"""Checkpoints: the states a run saves, the files and folders they go into, resuming, and loading a
model's weights from any source."""
