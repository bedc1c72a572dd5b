"""`python search/run.py --space tnet`: a hyperparameter search of Noise2Noise denoisers on Ray Tune.

Exit status: 0 done, 2 bad usage or bad input (one line on stderr), 1 anything else.
A local Ray runs in a private network namespace where that is possible (search/private_network.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search import private_network  # noqa: E402

if __name__ == "__main__":
    private_network.isolate(str(Path(__file__).resolve()), sys.argv[1:])

from search.cli import main  # noqa: E402


def console() -> int:
    """The installed `n2n-search` command: this script, from any directory."""
    private_network.isolate(str(Path(__file__).resolve()), sys.argv[1:])
    return main()


if __name__ == "__main__":
    sys.exit(main())
