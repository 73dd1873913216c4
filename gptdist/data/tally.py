"""What prepare's summary says about its input: documents skipped and why, files with undecodable bytes;
for each kind of problem the first EXAMPLES names and a count (kept in the manifest, and in a progress
record so that a resumed prepare's summary is the uninterrupted one's)."""

from collections import Counter

EXAMPLES = 5  # files named in the summary for each kind of problem; the rest are counted


class Tally:
    """The summary's counts and names, document by document."""

    def __init__(self):
        self.skipped: Counter = Counter()
        self.replaced_characters = self.files_with_replacements = 0
        self.examples: dict[str, list[str]] = {}

    def add(self, stats: dict, index: int) -> None:
        name = stats["name"] or f"document {index}"
        if stats["replaced"]:
            self.replaced_characters += stats["replaced"]
            self.files_with_replacements += 1
            self._example("undecodable bytes", name)
        if stats["skipped"]:
            self.skipped[stats["skipped"]] += 1
            self._example(stats["skipped"], name)

    def add_tally(self, state: dict) -> None:
        """Another tally's counts and names after this one's (`state_dict`'s form: a part's, at a merge)."""
        self.skipped.update(state["skipped"])
        self.replaced_characters += state["replaced_characters"]
        self.files_with_replacements += state["files_with_replacements"]
        for problem, names in state["examples"].items():
            for name in names:
                self._example(problem, name)

    def _example(self, problem: str, name: str) -> None:
        names = self.examples.setdefault(problem, [])
        if len(names) < EXAMPLES:
            names.append(name)

    def state_dict(self) -> dict:
        return {"skipped": dict(self.skipped), "replaced_characters": self.replaced_characters,
                "files_with_replacements": self.files_with_replacements, "examples": self.examples}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = Counter(state["skipped"])
        self.replaced_characters = state["replaced_characters"]
        self.files_with_replacements = state["files_with_replacements"]
        self.examples = {problem: list(names) for problem, names in state["examples"].items()}
