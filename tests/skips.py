"""No silent skips: a test skipped for a reason not allowed here fails the run (exit status 1) and is listed
with its reason at the end. A skip hides a missing piece (an extra not installed, a tool not found) that a
green run would otherwise claim to have tested.

ALLOWED: the reasons a test may be skipped for, each with why it cannot run everywhere. Only where its
condition holds is the skip allowed: a test that needs root is allowed to skip for a user, never for root.
"""

import os
import re

ALLOWED = [
    # (a pattern of the skip's reason, whether it may skip on this machine, why)
    (r"CUDA", True, "needs a CUDA device, or runs only where there is none"),
    (r"needs root", os.geteuid() != 0, "mounts a file system or installs SLURM, which only root can do"),
    (r"lacks [0-9a-f]{7,}: ", True, "reads an earlier gptdist from the repository's history, which a shallow "
                                   "clone does not have"),
]

_refused: list[tuple[str, str]] = []


def allowed(reason: str) -> bool:
    return any(re.search(pattern, reason) and holds for pattern, holds, _ in ALLOWED)


def _reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


def _note(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _reason(report).removeprefix("Skipped: ")
        if not allowed(reason):
            _refused.append((report.nodeid, reason))


def pytest_runtest_logreport(report):
    _note(report)


def pytest_collectreport(report):
    _note(report)


def pytest_sessionfinish(session, exitstatus):
    if _refused and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if not _refused:
        return
    terminalreporter.section("skips not allowed (tests/skips.py)", red=True)
    for nodeid, reason in _refused:
        terminalreporter.line(f"{nodeid}: {reason}")
    terminalreporter.line(f"{len(_refused)} test(s) skipped for a reason tests/skips.py does not allow: "
                          "install what they name (pip install -e '.[dev]') or run them as they need; the "
                          "run fails")
