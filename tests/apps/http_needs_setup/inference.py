"""An app whose setup has a required value: ``schema`` must describe it without setup."""

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup
from pydantic import Field


class AppSetup(BaseAppSetup):
    secret: str = Field(description="Required: there is no default")


class AppInput(BaseAppInput):
    text: str


class AppOutput(BaseAppOutput):
    text: str


class App(BaseApp):
    async def setup(self, config: AppSetup):
        self.secret = config.secret

    async def run(self, input_data: AppInput) -> AppOutput:
        """Append the secret."""
        return AppOutput(text=f"{input_data.text}:{self.secret}")
