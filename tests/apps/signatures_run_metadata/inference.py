"""run(self, app_input, metadata): the request's metadata is passed to run.

The input can ask the app to call ``metadata.log`` and ``metadata.progress``, which
the runtime provides.
"""

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, Metadata


def describe(value: object) -> str:
    """The name tests expect for an argument: "Metadata" for any SDK Metadata."""
    return "Metadata" if isinstance(value, Metadata) else type(value).__name__


class AppInput(BaseAppInput):
    text: str = ""
    log: str | None = None
    progress: float | None = None


class AppOutput(BaseAppOutput):
    setup_received: list[str]
    run_received: list[str]
    greeting: str | None = None
    task_id: str | None = None


class App(BaseApp):
    async def setup(self):
        self.setup_received = []

    async def run(self, app_input: AppInput, metadata) -> AppOutput:
        if app_input.log is not None:
            metadata.log(app_input.log)
        if app_input.progress is not None:
            metadata.progress(app_input.progress, "working")
        return AppOutput(
            setup_received=self.setup_received,
            run_received=[describe(app_input), describe(metadata)],
            task_id=metadata.task_id,
        )
