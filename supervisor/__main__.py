"""``python -m supervisor``: the command line (see ``cli``).

``serve`` spawns its first child before importing the rest (``head_start``).
"""

import sys

from .process import head_start

head_start.begin(sys.argv[1:])

from .cli import main  # noqa: E402  (after the head start, on purpose)

if __name__ == "__main__":
    sys.exit(main())
