"""Evaluation: loss and perplexity on prepared data, and HellaSwag accuracy."""
