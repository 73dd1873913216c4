"""Command-line parsing for every gptdist command: a mistake is one line naming the flag and the range.

argparse would print its usage before the error; gptdist's commands say only what was wrong
(`--help` still prints the usage), and check numbers where they enter.
"""

import argparse
import math

from .errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(message)  # main's @cli prints it as one line and exits 2


def _number(kind, description: str, valid):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got "
                                             f"{text!r}") \
                from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"{value} is out of range (must be {description})")
        return value

    return parse


positive_int = _number(int, "> 0", lambda v: v > 0)
non_negative_int = _number(int, ">= 0", lambda v: v >= 0)
positive_float = _number(float, "finite and > 0", lambda v: math.isfinite(v) and v > 0)
non_negative_float = _number(float, "finite and >= 0", lambda v: math.isfinite(v) and v >= 0)
fraction = _number(float, "between 0 and 1", lambda v: 0 < v < 1)


def non_empty_text(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("is empty")
    return text
