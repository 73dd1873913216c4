"""gptdist.plan's parts: memory measured on fake tensors (memory.py), the largest micro-batch (batch.py),
time at an MFU (timing.py), the data (data.py), and the plan put together from them (assemble.py)."""
