"""Command-line parsing for every gptdist command: a mistake is one line naming the flag and the range.

argparse would print its usage before the error; gptdist's commands say only what was wrong
(`--help` still prints the usage), and check values where they enter. Every flag that takes a
value declares what it is through its type: a `Number` with its range, a `Text`, a `PathArgument`
that the command reads or writes, or a fixed set of `choices` (tests/test_bad_input.py tries every
flag with values outside each declaration).
"""

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

from .errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(message)  # main's @cli prints it as one line and exits 2


@dataclass(frozen=True)
class Number:
    """A number flag: its `kind` (int or float) and the range it must lie in, worded as the error says it."""

    kind: type
    description: str
    valid: Callable[[float], bool]

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            expected = "an integer" if self.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not self.valid(value):
            raise argparse.ArgumentTypeError(f"{value} is out of range (must be {self.description})")
        return value


@dataclass(frozen=True)
class Text:
    """A flag of free text, which must not be empty (a prompt, a dataset's name or column)."""

    def __call__(self, text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError("is empty")
        return text


@dataclass(frozen=True)
class PathArgument(Text):
    """A path flag: what the command does with it (`role`: INPUT, it reads it; OUTPUT, it writes it)."""

    role: str


@dataclass(frozen=True)
class Part(Text):
    """`K/N`: the K-th of N parts (1 <= K <= N), as (K, N)."""

    def __call__(self, text: str) -> tuple[int, int]:
        number, _, parts = super().__call__(text).partition("/")
        if not (number.isdigit() and parts.isdigit()):
            raise argparse.ArgumentTypeError(f"expected K/N (the K-th of N parts), got {text!r}")
        if not 1 <= int(number) <= int(parts):
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be K/N with 1 <= K <= N)")
        return int(number), int(parts)


INPUT, OUTPUT = "input", "output"

positive_int = Number(int, "> 0", lambda v: v > 0)
non_negative_int = Number(int, ">= 0", lambda v: v >= 0)
positive_float = Number(float, "finite and > 0", lambda v: math.isfinite(v) and v > 0)
non_negative_float = Number(float, "finite and >= 0", lambda v: math.isfinite(v) and v >= 0)
fraction = Number(float, "between 0 and 1", lambda v: 0 < v < 1)
seed = Number(int, "in [0, 2**32)", lambda v: 0 <= v < 2**32)  # what every generator seeded from it takes
text = Text()
part = Part()
input_path = PathArgument(INPUT)
output_path = PathArgument(OUTPUT)
