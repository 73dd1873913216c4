"""Files: sha256 and durable writes, verified downloads, and the one rule for what a command replaces."""
