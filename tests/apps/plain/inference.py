"""An app that does not use the inferencesh SDK: a plain class and pydantic models."""

from pydantic import BaseModel


class Input(BaseModel):
    text: str


class Output(BaseModel):
    text: str
    setup_called: bool


class App:
    def __init__(self) -> None:
        self.ready = False

    def setup(self):
        self.ready = True

    def run(self, input_data: Input) -> Output:
        """Upper-case the text."""
        return Output(text=input_data.text.upper(), setup_called=self.ready)
