"""Training: the Trainer and what it is made of: parallelism, precision, optimizer, schedule, guards,
stopping, the run log, evaluation during training, and the benchmarks of all of it."""
