"""``python -m supervisor``: the command line (see ``cli``).

``serve`` spawns its first child before importing the rest (``head_start``).
The start's imports run without the cyclic garbage collector: its collections
took about a tenth of them and found next to nothing. ``cli.main`` turns it back
on once they are done.
"""

import gc
import sys

if __name__ == "__main__":  # imported as a module, nothing would turn it back on
    gc.disable()

from .process import head_start

head_start.begin(sys.argv[1:])

from .cli import main  # noqa: E402  (after the head start, on purpose)

if __name__ == "__main__":
    sys.exit(main(collector_paused=True))
