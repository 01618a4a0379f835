"""A plain app that never gets to be loaded: start it with ``PYTHONPATH`` set to
its ``early`` directory, whose ``sitecustomize`` kills the interpreter at start-up,
before the child runtime can send its handshake."""

from pydantic import BaseModel


class Input(BaseModel):
    text: str = ""


class Output(BaseModel):
    text: str


class App:
    def run(self, input_data: Input) -> Output:
        return Output(text=input_data.text)
