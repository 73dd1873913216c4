"""Data: corpora in, memory-mapped token shards out, and the windows and sampler that training reads."""
