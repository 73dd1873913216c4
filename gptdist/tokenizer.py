"""The GPT-2 byte-pair encoding, through tiktoken."""

import functools

import tiktoken

from .errors import UserError

TOKENIZER_NAME = "gpt2"
GPT2_VOCAB_SIZE = 50257
EOT_TOKEN = 50256  # "<|endoftext|>"


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding; its BPE files come from TIKTOKEN_CACHE_DIR or a download."""
    try:
        return tiktoken.get_encoding(TOKENIZER_NAME)
    except Exception as err:  # tiktoken raises requests/OSError variants when it cannot download
        raise UserError(
            f"cannot load the GPT-2 tokenizer ({type(err).__name__}); offline, point "
            "TIKTOKEN_CACHE_DIR at a folder holding tiktoken's cached gpt2 files"
        ) from None


def encode(text: str) -> list[int]:
    """Text to token ids; text that looks like a special token is encoded as plain text."""
    return gpt2_encoding().encode_ordinary(text)


def decode(tokens) -> str:
    return gpt2_encoding().decode(list(tokens))
