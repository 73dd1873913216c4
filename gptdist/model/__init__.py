"""The model: GPT-2 as the book builds it, its loss, text sampling, and its weights in OpenAI's and
Hugging Face's files."""
