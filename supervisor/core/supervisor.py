"""The supervisor: the object a host service embeds.

``async with Supervisor() as sup`` opens a task group that owns every app and
every child; leaving it stops them all (unload with a deadline, then kill).
``start`` reads the app's ``inf.yml``, allocates GPUs, builds the replica
replicas and returns once every replica is ready.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .. import errors
from ..environments.app_config import AppConfigError, AppManifest, open_app_dir
from ..environments.app_interpreter import AppInterpreter, app_interpreter
from ..environments.app_secrets import SecretMask, resolve_secrets
from ..environments.env_cache import EnvCache
from ..environments.env_spec import EnvSpec
from ..environments.environment import child_environment
from ..environments.system_packages import listed_packages, missing_packages
from ..gpu.allocation import AllocationError, allocate_gpus, check_explicit, gpu_environment
from ..gpu.backend import GpuBackend, open_backend
from ..gpu.monitor import ResourceMonitor
from ..gpu.sample import DeviceMemory
from ..process.child_launch import DEFAULT_SHARED_MEMORY
from ..process.confinement import DEFAULT_MAX_OPEN_FILES, Confinement, ConfinementError
from ..process.learned_preloads import LEARNED_PRELOADS_FILE, LearnedPreloads
from ..process.non_dumpable import is_dumpable, make_non_dumpable
from ..process.pool import ChildPool
from .app import App
from .input_limits import InputLimits
from .replica import Replica, ReplicaSpec
from .resource_governor import ResourceGovernor
from .restart_policy import RestartPolicy

if TYPE_CHECKING:
    from ..environments.node_runtime import NodeApp

logger = logging.getLogger("supervisor")
env_logger = logging.getLogger("supervisor.env")

DEFAULT_QUEUE_SIZE = 256


class Supervisor:
    def __init__(
        self,
        *,
        gpu_backend: GpuBackend | str | None = "auto",
        restart_policy: RestartPolicy | None = None,
        monitor_interval: float = 1.0,
        min_free_vram: int | float | None = None,
        heartbeat_interval: float = 10.0,
        heartbeat_timeout: float = 30.0,
        cancel_grace: float = 5.0,
        unload_timeout: float = 10.0,
        budget_grace: float = 5.0,
        admission_timeout: float = 60.0,
        pool_size: int = 1,
        pool_preload: Sequence[str] = (),
        fork_server: bool = True,
        learn_preloads: bool | str | Path = True,
        shared_memory: int = DEFAULT_SHARED_MEMORY,
        containment: str = "auto",
        child_user: str | None = None,
        max_open_files: int = DEFAULT_MAX_OPEN_FILES,
        dumpable: bool = False,
        app_envs: bool = True,
        env_cache: EnvCache | str | Path | None = None,
        allow_host_python: bool = False,
        strict: bool = False,
    ) -> None:
        """``shared_memory``: bytes of shared memory per child and direction that
        large byte strings travel through instead of the pipe (0 turns it off).

        ``fork_server``: with a pool (``pool_size`` > 0), a zygote per environment
        (``fork_server``) forks the pool's children and those of starts that find no
        idle one, in milliseconds instead of a spawn; False: spawns only.
        ``learn_preloads``: a fork server also imports the library modules that apps
        of its environment imported when they were set up, kept in a file (a path;
        True: ``learned-preloads.json`` in the environment cache, or in memory
        without one); False: only ``pool_preload`` and the SDK.

        ``containment``: ``auto`` (a cgroup per child where the host allows it, with a
        hard limit at the app's RAM budget, else the child's subreaper), ``cgroup``
        (fail to start without cgroups) or ``subreaper``. ``child_user`` runs the
        children as that unprivileged user (the supervisor must be root), with no new
        privileges, no core dumps and at most ``max_open_files`` descriptors.
        Unless ``dumpable``, the process is made non-dumpable (``non_dumpable``) so
        that children of the same user cannot read its environment or memory.
        ``app_envs``: an app with a requirements file runs in its own environment,
        kept under ``env_cache`` (a directory, default ``$APPVISOR_ENV_CACHE`` or
        ``~/.cache/appvisor/envs``); False runs every app on this interpreter.
        ``allow_host_python``: an app whose ``kernel:`` names a Python that is not
        installed runs on this one's version, with a warning, instead of failing.
        """
        if shared_memory < 0:
            raise ValueError("shared_memory must be at least 0")
        self.confinement = Confinement(containment, child_user, max_open_files)
        self.dumpable = dumpable
        self.shared_memory = shared_memory
        self._backend_choice = gpu_backend
        self.gpu_backend: GpuBackend | None = None
        self.restart_policy = restart_policy or RestartPolicy()
        self.monitor_interval = monitor_interval
        self.min_free_vram = min_free_vram
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.cancel_grace = cancel_grace
        self.unload_timeout = unload_timeout
        self.budget_grace = budget_grace
        self.admission_timeout = admission_timeout
        self.apps: dict[str, App] = {}
        self.env_cache: EnvCache | None = None
        if app_envs:
            self.env_cache = env_cache if isinstance(env_cache, EnvCache) else EnvCache(env_cache)
        learned = None
        if learn_preloads is not False:
            path = Path(learn_preloads) if not isinstance(learn_preloads, bool) else None
            if path is None and self.env_cache is not None:
                path = self.env_cache.root / LEARNED_PRELOADS_FILE
            learned = LearnedPreloads(path)
        self.pool = ChildPool(
            pool_size,
            pool_preload,
            shared_memory=shared_memory,
            fork_server=fork_server,
            learned=learned,
        )
        """Pre-started children; ``pool_size=0`` turns it off (and the fork servers)."""
        self.pool.confinement = self.confinement
        self.monitor: ResourceMonitor | None = None
        self.governor: ResourceGovernor | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self.allow_host_python = allow_host_python
        self.strict = strict
        self.installing: dict[str, dict[str, Any]] = {}
        """Apps whose environment is being built, by name: their status until started."""

    # -- context --------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        if not self.dumpable and not make_non_dumpable():
            logger.warning("cannot make the supervisor non-dumpable on this platform")
        try:
            self.confinement.open()
            self.confinement.check_interpreter(
                sys.executable, child_environment({}, cuda_visible_devices="")
            )
        except ConfinementError as exc:
            self.confinement.close()
            raise errors.LoadFailedError(str(exc)) from exc
        if self._backend_choice == "auto":
            self.gpu_backend = open_backend()
        elif not isinstance(self._backend_choice, str):
            self.gpu_backend = self._backend_choice
        self._task_group = anyio.create_task_group()
        self._tasks = await self._task_group.__aenter__()
        self.monitor = ResourceMonitor(self.gpu_backend, self.monitor_interval)
        self.governor = ResourceGovernor(
            self._budgeted_replicas,
            self.monitor,
            self._tasks,
            min_free_vram=self.min_free_vram,
            budget_grace=self.budget_grace,
        )
        self.monitor.on_sample = self.governor.on_sample
        self._tasks.start_soon(self.monitor.run)
        if self.pool.size > 0:
            await self._tasks.start(self.pool.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            with anyio.CancelScope(shield=True):
                await self.stop_all()
        finally:
            assert self._tasks is not None
            self._tasks.cancel_scope.cancel()
            # The body's own exception propagates as it is, not wrapped in a group.
            await self._task_group.__aexit__(None, None, None)
            if self.gpu_backend is not None:
                self.gpu_backend.close()
            self.confinement.close()
        return None

    async def stop_all(self) -> None:
        async with anyio.create_task_group() as tasks:
            for app in list(self.apps.values()):
                tasks.start_soon(app.stop)

    # -- starting apps ----------------------------------------------------------

    async def start(
        self,
        app_dir: str | Path,
        *,
        setup: Mapping[str, Any] | None = None,
        name: str | None = None,
        gpus: int | Sequence[int] | None = None,
        env: Mapping[str, str] | None = None,
        replicas: int = 1,
        max_concurrency: int = 1,
        setup_timeout: float = 300.0,
        run_timeout: float | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        vram_budget: int | None = None,
        ram_budget: int | None = None,
        preload: Sequence[str] | None = None,
        standby: bool = False,
        lock_setup: bool = False,
        limits: InputLimits | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> App:
        """Start an app and return its handle once every replica is ready.

        ``standby`` keeps, per replica, a spare child with the app loaded but not
        set up, so that a restart (after a crash, a kill or a config change) costs
        a ``setup`` instead of a start. It doubles the app's import-time memory, and
        is for apps whose import does not touch the GPU: a standby's memory is not
        counted against the budgets.

        ``lock_setup`` refuses requests whose setup values differ from ``setup``;
        ``limits`` bounds the nesting and size of inputs and setup values.
        ``secrets`` holds values for the keys the app declares under ``secrets:``
        and ``integrations:`` in ``inf.yml``; only those reach its children, and a
        required one missing is ``MissingSecretError`` before any child starts.
        Other keys are ignored, so one mapping can serve several apps.
        """
        if self._tasks is None:
            raise RuntimeError("use the Supervisor as an async context manager")
        self.pool.start_coming()
        started = time.monotonic()
        try:
            directory, manifest = open_app_dir(app_dir)
        except AppConfigError as exc:
            raise errors.LoadFailedError(str(exc)) from exc
        app_name = name or manifest.name
        if app_name in self.apps or app_name in self.installing:
            raise errors.InputValidationError(f"an app named {app_name!r} is already running")
        if replicas < 1 or max_concurrency < 1:
            raise ValueError("replicas and max_concurrency must be at least 1")
        secret_values = resolve_secrets(manifest.secrets, secrets or {}, app_name)
        mask = SecretMask(secret_values.values())
        machine_warnings = await self._check_machine(directory, manifest, app_name, gpus)
        interpreter = await self._interpreter(directory, manifest, app_name)
        node: NodeApp | None = None
        if manifest.runtime == "node":
            from ..environments.node_runtime import prepare_node_app  # node apps only

            node = await anyio.to_thread.run_sync(prepare_node_app, directory, manifest)
        spec = ReplicaSpec(
            app_dir=directory,
            name=app_name,
            python=interpreter.python,
            env={
                **manifest.env,
                **(env or {}),
                **(node.env if node else {}),
                **secret_values,
            },
            mask=mask if mask else None,
            max_concurrency=max_concurrency,
            setup_timeout=setup_timeout,
            run_timeout=run_timeout,
            cancel_grace=self.cancel_grace,
            unload_timeout=self.unload_timeout,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            restart_policy=self.restart_policy,
            preload=tuple(self.pool.default_key.preload if preload is None else preload),
            shared_memory=self.shared_memory,
            standby=standby,
            confinement=self.confinement,
            node=node.node if node else None,
        )
        vram = vram_budget if vram_budget is not None else manifest.vram
        app: App | None = None

        def register(placements: list[tuple[int, ...]]) -> None:
            """Make the app and its replicas, which hold its VRAM from now on."""
            nonlocal app
            if app_name in self.apps:  # started while this one waited for room
                raise errors.InputValidationError(f"an app named {app_name!r} is already running")
            assert self.governor is not None
            members = [
                Replica(
                    spec,
                    i,
                    placement,
                    on_change=self.governor.track,
                    pool=self.pool,
                    readmit=partial(self._readmit, vram) if vram and placement else None,
                    gpu_env=gpu_environment(placement),
                )
                for i, placement in enumerate(placements)
            ]
            app = App(
                app_name,
                directory,
                members,
                queue_size,
                dict(setup or {}),
                run_timeout,
                on_stop=self._forget,
                limits=limits,
                lock_setup=lock_setup,
            )
            app.vram_budget = vram
            app.ram_budget = ram_budget if ram_budget is not None else manifest.ram
            app.environment = interpreter.info
            app.warnings = [*machine_warnings, *interpreter.warnings]
            self.apps[app_name] = app

        await self._place(app_name, replicas, gpus, manifest.gpu_count, vram, register)
        assert app is not None
        try:
            await self._tasks.start(app.serve)
            await self._start_replicas(app.replicas, app.setup)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await app.stop()
            raise
        app.description = dict(app.replicas[0].description or {})
        app.cold_start = time.monotonic() - started
        logger.info("%s ready in %.3f s on %d replica(s)", app_name, app.cold_start, replicas)
        return app

    async def _check_machine(
        self,
        directory: Path,
        manifest: AppManifest,
        app_name: str,
        gpus: int | Sequence[int] | None,
    ) -> list[str]:
        """What the app declares and this machine lacks: warnings, or with ``strict``
        the error. Only checked, never installed."""
        warnings = []
        listed = listed_packages(directory)
        missing = await anyio.to_thread.run_sync(missing_packages, listed) if listed else []
        if missing:
            text = (
                f"packages.txt lists {', '.join(missing)}, not installed on this machine "
                "(system packages are not installed by the runtime)"
            )
            if self.strict:
                raise errors.MissingSystemPackagesError(f"{app_name}: {text}", missing=missing)
            warnings.append(text)
        if manifest.gpu_count and gpus is None and not await self._devices():
            text = (
                f"inf.yml declares {manifest.gpu_count} GPU(s), but this machine has none: "
                "running without"
            )
            if self.strict:
                raise errors.AdmissionError(f"{app_name}: {text}")
            warnings.append(text)
        for warning in warnings:
            logger.warning("%s: %s", app_name, warning)
        return warnings

    async def _interpreter(
        self, directory: Path, manifest: AppManifest, app_name: str
    ) -> AppInterpreter:
        """The app's interpreter; while its environment is built, the app shows in
        ``status()`` as ``installing``, with the installer's latest line."""
        entry: dict[str, Any] = {}

        def building(spec: EnvSpec) -> None:
            entry.update(
                name=app_name,
                app_dir=str(directory),
                state="installing",
                ready=False,
                available=False,
                environment={
                    "env": spec.key,
                    "requirements": spec.requirements.name,
                    "python_version": spec.python.version,
                },
                progress=None,
            )
            self.installing[app_name] = entry

        def progress(line: str) -> None:
            env_logger.info("%s: %s", app_name, line)
            entry["progress"] = line

        try:
            return await app_interpreter(
                directory,
                manifest,
                cache=self.env_cache,
                allow_host_python=self.allow_host_python,
                on_build=building,
                on_progress=progress,
            )
        finally:
            if self.installing.get(app_name) is entry:
                del self.installing[app_name]

    @staticmethod
    async def _start_replicas(replicas: Sequence[Replica], setup: dict[str, Any]) -> None:
        """Start every replica concurrently; raise the first failure itself, not a group."""
        failures: list[BaseException] = []

        async def start_one(replica: Replica) -> None:
            try:
                await replica.ensure(setup)
            except errors.SupervisorError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tasks:
            for replica in replicas:
                tasks.start_soon(start_one, replica)
        if failures:
            raise failures[0]

    async def _place(
        self,
        name: str,
        replicas: int,
        gpus: int | Sequence[int] | None,
        declared_count: int,
        vram: int | None,
        register: Callable[[list[tuple[int, ...]]], None],
    ) -> None:
        """GPUs for each replica, handed to ``register``: explicit indices, a
        count, or what inf.yml declares.

        With a VRAM figure, the replicas are admitted together (evicting idle
        children or waiting for room), on their explicit GPUs if they have them,
        each counting what the replicas before it will use, and ``register`` runs
        inside the admission, so that no other admission can miss their VRAM;
        without one, GPUs are spread by free memory.
        """
        devices = await self._devices()
        explicit: tuple[int, ...] | None = None
        if gpus is not None and not isinstance(gpus, int):
            try:
                explicit = check_explicit(devices, gpus) if devices else tuple(gpus)
            except AllocationError as exc:
                raise errors.AdmissionError(str(exc)) from exc
            if not (vram and devices and explicit):
                register([explicit] * replicas)
                return
        if explicit is not None:
            count = len(explicit)
        elif isinstance(gpus, int):
            count = gpus
        else:
            count = declared_count if devices else 0
        if count == 0:
            register([()] * replicas)
            return
        if not devices:
            raise errors.AdmissionError(f"{count} GPU(s) requested but no GPU was found")
        assert self.governor is not None
        if vram:
            await self.governor.admit(
                count=count,
                vram_per_gpu=vram,
                timeout=self.admission_timeout,
                replicas=replicas,
                only=explicit,
                on_admitted=register,
                who=name,
            )
            return
        taken = self._gpu_usage()
        placements = []
        for _ in range(replicas):
            try:
                chosen = allocate_gpus(devices, count=count, vram_per_gpu=None, taken=taken)
            except AllocationError as exc:
                raise errors.AdmissionError(str(exc)) from exc
            for index in chosen:
                taken[index] = taken.get(index, 0) + 1
            placements.append(chosen)
        register(placements)

    async def _readmit(self, vram: int, replica: Replica) -> None:
        """Admit an evicted replica's VRAM on its own GPUs again before it restarts."""

        def readmitted(_: list[tuple[int, ...]]) -> None:
            replica.readmitted()

        assert self.governor is not None
        await self.governor.admit(
            count=len(replica.gpus),
            vram_per_gpu=vram,
            timeout=self.admission_timeout,
            only=replica.gpus,
            unmeasured_ok=True,
            on_admitted=readmitted,
            who=replica.name,
        )

    async def _devices(self) -> tuple[DeviceMemory, ...]:
        if self.monitor is None or self.gpu_backend is None:
            return ()
        snapshot = await self.monitor.refresh(host_memory=False)
        if snapshot.gpu_error:
            raise errors.AdmissionError(f"cannot read GPU figures: {snapshot.gpu_error}")
        return snapshot.devices

    def _gpu_usage(self) -> dict[int, int]:
        taken: dict[int, int] = {}
        for app in self.apps.values():
            for replica in app.replicas:
                for index in replica.gpus:
                    taken[index] = taken.get(index, 0) + 1
        return taken

    def _budgeted_replicas(self) -> list[tuple[Replica, int | None, int | None]]:
        return [
            (replica, app.vram_budget, app.ram_budget)
            for app in self.apps.values()
            for replica in app.replicas
        ]

    def _forget(self, app: App) -> None:
        if self.apps.get(app.name) is app:
            del self.apps[app.name]

    # -- reporting --------------------------------------------------------------

    def gpu_status(self) -> list[dict[str, Any]]:
        """Each GPU's memory at the latest sample, and what apps' budgets promise."""
        snapshot = self.monitor.latest if self.monitor else None
        if snapshot is None:
            return []
        promised = self.governor.promised(snapshot) if self.governor else {}
        return [
            {
                "index": d.index,
                "name": d.name,
                "total": d.total,
                "used": d.used,
                "free": d.free,
                "promised": promised.get(d.index, 0),
            }
            for d in snapshot.devices
        ]

    def status(self) -> dict[str, Any]:
        snapshot = self.monitor.latest if self.monitor else None
        return {
            "apps": {
                **{name: dict(entry) for name, entry in self.installing.items()},
                **{name: app.status() for name, app in self.apps.items()},
            },
            "gpus": self.gpu_status(),
            "sampled_at": snapshot.taken_at if snapshot else None,
            "pool": self.pool.status(),
            "containment": {**self.confinement.status(), "supervisor_dumpable": is_dumpable()},
        }
