"""Imports library modules when loaded and when set up, for the learned-preload tests.

It reports which of them were already imported when its module began to run: in
a child forked by a fork server that learned them, all of them.
"""

import sys

WATCHED = ("colorsys", "graphlib", "sched")
ALREADY = {name: name in sys.modules for name in WATCHED}

import colorsys  # noqa: E402 - after the check above, on purpose

import learns_imports_helper  # noqa: E402 - the app's own module: never learned
from pydantic import BaseModel  # noqa: E402


class Input(BaseModel):
    pass


class Output(BaseModel):
    already: dict[str, bool]
    helper: str


class App:
    async def setup(self) -> None:
        import graphlib  # lazily, as a lazy package imports a model's code

        self.order = list(graphlib.TopologicalSorter({"b": {"a"}}).static_order())

    async def run(self, data: Input) -> Output:
        import sched  # only when serving: not part of what setup reports

        assert colorsys.rgb_to_hsv(0, 0, 0) == (0, 0, 0) and sched
        return Output(already=ALREADY, helper=learns_imports_helper.NAME)
