"""gptdist.plan's parts: memory measured on fake tensors (step_memory.py), the largest micro-batch
(batch.py), time at an MFU (timing.py), the data (epochs.py), the plan put together (assemble.py) and
printed (report.py)."""
