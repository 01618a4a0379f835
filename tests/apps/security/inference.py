"""An app that tries to escape: it echoes paths, reads what it is given, starts detached
processes and reads its supervisor's /proc entries. The security tests drive it."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, File
from pydantic import BaseModel


class AppSetup(BaseAppSetup):
    weights: File | None = None


class EchoInput(BaseAppInput):
    data: dict = {}


class EchoOutput(BaseAppOutput):
    data: dict


class Bundle(BaseModel):
    files: list[File] = []
    note: dict = {}


class MakeInput(BaseAppInput):
    special: str | None = None


class MakeOutput(BaseAppOutput):
    main: File
    bundle: Bundle
    maybe: File | None = None


class ReadInput(BaseAppInput):
    file: File | None = None
    nested: Bundle | None = None


class ReadOutput(BaseAppOutput):
    content: str
    path: str
    setup_content: str | None = None


class SpawnInput(BaseAppInput):
    how: str = "setsid"


class SpawnOutput(BaseAppOutput):
    pids: list[int]


class WhoAmIOutput(BaseAppOutput):
    uid: int
    gid: int
    groups: list[int]
    core_limit: list[int]
    open_files_limit: list[int]
    no_new_privs: str
    cap_eff: str


class ProcInput(BaseAppInput):
    entry: str = "environ"


class ProcOutput(BaseAppOutput):
    outcome: str
    content: str = ""


DETACH = """
import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
print(os.getpid(), flush=True)
os.close(1)
time.sleep(600)
"""


class App(BaseApp):
    async def setup(self, config: AppSetup):
        self.weights = config.weights
        self.out_dir = Path(tempfile.mkdtemp(prefix="appvisor-security-app-"))

    async def run(self, input_data: EchoInput) -> EchoOutput:
        """Echo a plain dict: whatever it holds is data, never a file to publish."""
        return EchoOutput(data=input_data.data)

    async def make(self, input_data: MakeInput) -> MakeOutput:
        """Files at the top, in a nested model's list, and optionally a special one."""
        main = self.out_dir / "main.txt"
        main.write_text("main")
        inner = self.out_dir / "inner.txt"
        inner.write_text("inner")
        return MakeOutput(
            main=File(path=str(main)),
            bundle=Bundle(files=[File(path=str(inner))], note={"path": str(main)}),
            maybe=File(path=input_data.special) if input_data.special else None,
        )

    async def read(self, input_data: ReadInput) -> ReadOutput:
        """Read the file input (or the first nested one) and the setup's weights."""
        file = input_data.file or (input_data.nested.files[0] if input_data.nested else None)
        content = Path(file.path).read_text(errors="replace") if file else ""
        weights = self.weights
        return ReadOutput(
            content=content,
            path=file.path if file else "",
            setup_content=Path(weights.path).read_text(errors="replace") if weights else None,
        )

    def spawn(self, input_data: SpawnInput) -> SpawnOutput:
        """Start a process that detaches from the child: double fork + setsid, or a new session."""
        if input_data.how == "exit":
            os._exit(3)
        if input_data.how == "setsid":
            out = subprocess.run(
                [sys.executable, "-c", DETACH],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                check=True,
            )
            return SpawnOutput(pids=[int(out.stdout.split()[0])])
        process = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return SpawnOutput(pids=[process.pid])

    async def whoami(self, input_data: EchoInput) -> WhoAmIOutput:
        """Who the child runs as, and under which limits."""
        import resource

        status = Path("/proc/self/status").read_text().splitlines()
        flags = [line.split()[1] for line in status if line.startswith("NoNewPrivs")]
        return WhoAmIOutput(
            uid=os.getuid(),
            gid=os.getgid(),
            groups=os.getgroups(),
            core_limit=list(resource.getrlimit(resource.RLIMIT_CORE)),
            open_files_limit=list(resource.getrlimit(resource.RLIMIT_NOFILE)),
            no_new_privs=flags[0] if flags else "",
            cap_eff=next((line.split()[1] for line in status if line.startswith("CapEff")), ""),
        )

    async def proc(self, input_data: ProcInput) -> ProcOutput:
        """Read /proc/<supervisor>/<entry>: its environment or command line."""
        path = f"/proc/{os.environ['SUPERVISOR_PARENT_PID']}/{input_data.entry}"
        try:
            content = Path(path).read_bytes().decode(errors="replace")
        except OSError as exc:
            return ProcOutput(outcome=type(exc).__name__)
        return ProcOutput(outcome="read", content=content)
