"""Benchmark app: imports numpy at module level (a typical medium-weight dependency)."""

import numpy as np
from pydantic import BaseModel


class Input(BaseModel):
    n: int = 4


class Output(BaseModel):
    total: float


class App:
    async def setup(self) -> None:
        self.base = np.arange(16, dtype=np.float64)

    async def run(self, input_data: Input) -> Output:
        return Output(total=float(self.base[: input_data.n].sum()))
