"""python -m gptdist.plan: see gptdist/plan/__init__.py."""

from . import main

main()
