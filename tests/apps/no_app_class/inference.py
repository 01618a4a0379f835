"""An app module without an App class."""

from pydantic import BaseModel


class Input(BaseModel):
    text: str


class Application:
    def run(self, input_data: Input) -> Input:
        return input_data
