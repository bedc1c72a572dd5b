"""The search: `search/run.py` (the command) and, for Python, `search.run_search` (search.api),
imported on first use so that `import search` stays light (run.py re-executes before Ray loads)."""


def __getattr__(name: str):
    if name in ("run_search", "SearchResult"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
