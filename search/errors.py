"""The errors a search reports to its user, in a module of their own so that the command line
(search/cli.py) and the modules that run the search import them without importing each other."""
from __future__ import annotations


class UsageError(Exception):
    """Bad usage or bad input: reported as one line on stderr, exit status 2."""


class SearchInterrupted(Exception):
    """Ctrl-C outside Tune's own handling (loading data, starting Ray, a second Ctrl-C during
    `fit`); the message says whether there is anything to resume. Exit status 130."""
