"""The GPT-2 byte-pair encoding, through tiktoken."""

import functools

import tiktoken

from .errors import UserError

TOKENIZER_NAME = "gpt2"
GPT2_VOCAB_SIZE = 50257
EOT_TOKEN = 50256  # "<|endoftext|>"


# The two files tiktoken builds its gpt2 encoding from (URL, sha256): OpenAI's encoder.json and
# vocab.bpe, which are also Hugging Face's vocab.json and merges.txt.
BPE_FILES = {
    "vocab.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                   "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "merges.txt": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                   "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}


def _tiktoken_files(load):
    try:
        return load()
    except Exception as err:  # tiktoken raises requests/OSError variants when it cannot download
        raise UserError(
            f"cannot load the GPT-2 tokenizer ({type(err).__name__}); offline, point "
            "TIKTOKEN_CACHE_DIR at a folder holding tiktoken's cached gpt2 files"
        ) from None


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding; its BPE files come from TIKTOKEN_CACHE_DIR or a download."""
    return _tiktoken_files(lambda: tiktoken.get_encoding(TOKENIZER_NAME))


def bpe_files() -> dict[str, bytes]:
    """GPT-2's BPE files under Hugging Face's names, from tiktoken's cache (checked by sha256) or a
    download."""
    from tiktoken.load import read_file_cached

    return _tiktoken_files(lambda: {name: read_file_cached(url, sha256)
                                    for name, (url, sha256) in BPE_FILES.items()})


def encode(text: str) -> list[int]:
    """Text to token ids; text that looks like a special token is encoded as plain text."""
    return gpt2_encoding().encode_ordinary(text)


def decode(tokens) -> str:
    return gpt2_encoding().decode(list(tokens))


def token_bytes(token: int) -> bytes:
    """One token's bytes (a character may span several tokens)."""
    return gpt2_encoding().decode_single_token_bytes(token)
