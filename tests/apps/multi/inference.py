"""A multi-function inference.sh app: run, reverse, a streaming count and a sync add."""

import asyncio
from collections.abc import AsyncGenerator

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup
from pydantic import Field

from .helper import shout


class AppSetup(BaseAppSetup):
    greeting: str = Field(default="Hello", description="How to greet")


class RunInput(BaseAppInput):
    name: str = Field(description="Who to greet")


class RunOutput(BaseAppOutput):
    greeting: str


class ReverseInput(BaseAppInput):
    text: str
    shout: bool = False


class ReverseOutput(BaseAppOutput):
    text: str


class CountInput(BaseAppInput):
    n: int = Field(ge=0, description="Count from 1 to n")
    delay: float = Field(default=0.0, ge=0.0, description="Seconds to wait before each yield")


class CountOutput(BaseAppOutput):
    n: int


class AddInput(BaseAppInput):
    a: float
    b: float


class AddOutput(BaseAppOutput):
    sum: float


class App(BaseApp):
    async def setup(self, config):
        self.greeting = config.greeting

    async def run(self, input: RunInput) -> RunOutput:
        """Greet someone."""
        return RunOutput(greeting=f"{self.greeting}, {input.name}")

    async def reverse(self, input: ReverseInput) -> ReverseOutput:
        """Reverse a text, optionally shouting it."""
        text = input.text[::-1]
        return ReverseOutput(text=shout(text) if input.shout else text)

    async def count(self, input: CountInput) -> AsyncGenerator[CountOutput, None]:
        """Count from 1 to n, one output per number."""
        for i in range(1, input.n + 1):
            if input.delay:
                await asyncio.sleep(input.delay)
            yield CountOutput(n=i)

    def add(self, input: AddInput) -> AddOutput:
        """Add two numbers (a sync function)."""
        return AddOutput(sum=input.a + input.b)

    async def unload(self):
        self.greeting = None
