"""Reports what a fork would share if it were careless, for the fork server's tests.

``random`` and ``numpy`` draws (a fresh interpreter seeds both from the OS),
and a mark left on a module that the fork server preloads (``numpy``): the
previous mark, which must never be another app's.
"""

import os
import random
import sys

import numpy
from pydantic import BaseModel


class Input(BaseModel):
    mark: str = ""


class Output(BaseModel):
    pid: int
    random: float
    numpy_random: float
    previous_mark: str | None
    cwd: str
    path0: str
    cuda: str | None


class App:
    async def run(self, data: Input) -> Output:
        previous = getattr(numpy, "_fork_probe_mark", None)
        numpy._fork_probe_mark = data.mark  # type: ignore[attr-defined]
        return Output(
            pid=os.getpid(),
            random=random.random(),
            numpy_random=float(numpy.random.random()),
            previous_mark=previous,
            cwd=os.getcwd(),
            path0=sys.path[0],
            cuda=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
