"""The README's example: one app, three functions.

``run`` greets with the greeting chosen at setup, ``reverse`` is a second plain
function, and ``count`` is an async generator, so callers receive each number as
it is produced (``stream`` in the library, Server-Sent Events over HTTP).
"""

import asyncio
from collections.abc import AsyncGenerator

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup
from pydantic import Field


class AppSetup(BaseAppSetup):
    greeting: str = Field(default="Hello", description="How to greet")


class RunInput(BaseAppInput):
    name: str = Field(description="Who to greet")


class RunOutput(BaseAppOutput):
    greeting: str = Field(description="The greeting")


class ReverseInput(BaseAppInput):
    text: str = Field(description="Text to reverse")


class ReverseOutput(BaseAppOutput):
    text: str = Field(description="The text, reversed")


class CountInput(BaseAppInput):
    n: int = Field(ge=0, le=1000, description="Count from 1 to n")
    delay: float = Field(default=0.0, ge=0.0, le=10.0, description="Seconds before each number")


class CountOutput(BaseAppOutput):
    n: int = Field(description="The number reached so far")


class App(BaseApp):
    async def setup(self, config: AppSetup) -> None:
        self.greeting = config.greeting

    async def run(self, input_data: RunInput) -> RunOutput:
        """Greet someone with the greeting chosen at setup."""
        return RunOutput(greeting=f"{self.greeting}, {input_data.name}!")

    async def reverse(self, input_data: ReverseInput) -> ReverseOutput:
        """Reverse a text."""
        return ReverseOutput(text=input_data.text[::-1])

    async def count(self, input_data: CountInput) -> AsyncGenerator[CountOutput, None]:
        """Count from 1 to n, streaming one output per number."""
        for i in range(1, input_data.n + 1):
            if input_data.delay:
                await asyncio.sleep(input_data.delay)
            yield CountOutput(n=i)

    async def unload(self) -> None:
        self.greeting = ""
