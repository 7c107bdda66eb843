"""The flowscope command line (click): the group and its errors in main.py, the commands by
area in the modules beside it. Importing the package registers every command."""

from flowscope.cli import block, collect, history, replay, tools
from flowscope.cli.main import main

__all__ = ["block", "collect", "history", "main", "replay", "tools"]
