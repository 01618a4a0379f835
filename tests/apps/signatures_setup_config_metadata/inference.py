"""setup(self, config, metadata): both are passed, config as AppSetup."""

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, Metadata


class AppSetup(BaseAppSetup):
    greeting: str = "Hey"


def describe(value: object) -> str:
    """The name tests expect for an argument: "Metadata" for any SDK Metadata."""
    return "Metadata" if isinstance(value, Metadata) else type(value).__name__


class AppInput(BaseAppInput):
    text: str = ""


class AppOutput(BaseAppOutput):
    setup_received: list[str]
    run_received: list[str]
    greeting: str | None = None
    task_id: str | None = None


class App(BaseApp):
    async def setup(self, config, metadata):
        self.setup_received = [describe(config), describe(metadata)]
        self.greeting = config.greeting
        self.task_id = metadata.task_id

    async def run(self, input_data: AppInput) -> AppOutput:
        return AppOutput(
            setup_received=self.setup_received,
            run_received=[describe(input_data)],
            greeting=getattr(self, "greeting", None),
            task_id=getattr(self, "task_id", None),
        )
