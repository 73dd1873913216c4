"""Observation: the metrics file and loss plot, W&B, throughput, FLOPs and memory."""
