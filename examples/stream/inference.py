"""A streaming text app: an async generator that yields the text so far.

It stands in for a language model: each yield is a snapshot of the output
(``text`` so far, the new ``token``), and ``metadata.progress`` reports how far
along the generation is, so a caller can show both a growing text and a bar.
"""

import asyncio
from collections.abc import AsyncGenerator

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput
from pydantic import Field

CANNED_TEXT = (
    "a supervisor keeps every app in a child process of its own so that a crash, "
    "a leak or a hung model never takes the server down with it"
)
WORDS = CANNED_TEXT.split()


class AppInput(BaseAppInput):
    prompt: str = Field(description="The prompt (echoed; the tokens are canned)")
    max_tokens: int = Field(default=16, ge=1, le=256, description="How many tokens to produce")
    delay: float = Field(default=0.01, ge=0.0, le=5.0, description="Seconds between tokens")


class AppOutput(BaseAppOutput):
    text: str = Field(description="The text generated so far")
    token: str = Field(description="The latest token")
    tokens: int = Field(description="How many tokens so far")
    done: bool = Field(description="True on the last output")


class App(BaseApp):
    async def setup(self) -> None:
        self.vocabulary = WORDS

    async def run(self, input_data: AppInput, metadata) -> AsyncGenerator[AppOutput, None]:
        """Generate text token by token."""
        metadata.log(f"prompt: {input_data.prompt!r}")
        words: list[str] = []
        for i in range(input_data.max_tokens):
            await asyncio.sleep(input_data.delay)
            token = self.vocabulary[i % len(self.vocabulary)]
            words.append(token)
            done = i + 1 == input_data.max_tokens
            metadata.progress(current=i + 1, total=input_data.max_tokens, message="generating")
            yield AppOutput(text=" ".join(words), token=token, tokens=i + 1, done=done)
