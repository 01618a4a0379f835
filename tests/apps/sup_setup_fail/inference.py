"""A plain app whose setup raises."""

from pydantic import BaseModel


class Input(BaseModel):
    text: str = ""


class Output(BaseModel):
    text: str


def explode() -> None:
    raise RuntimeError("sup_setup_fail: setup exploded on purpose")


class App:
    def setup(self) -> None:
        explode()

    def run(self, input_data: Input) -> Output:
        return Output(text=input_data.text)
