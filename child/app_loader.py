"""Import an app directory and adapt to the shape of its ``App`` class.

The directory is imported as a package under a private name (``_app_<dir>_<n>``), so
``inference.py`` may use relative imports whatever the directory is called, and so
that loading the same directory twice in one process gives two independent modules.
The directory itself also goes on ``sys.path`` for apps that ``import helper``.

``setup`` signatures vary among public apps; ``LoadedApp.setup_args`` decides what to
pass, positionally, from the parameters that ``setup`` declares (see ANCHORS.md).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import itertools
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .functions import (
    AppFunction,
    discover_functions,
    is_metadata_type,
    is_model_type,
    model_schema,
    positional_params,
    type_hints,
)

_load_counter = itertools.count(1)
_CONFIG_PARAM_NAMES = ("config", "setup")


class AppLoadError(Exception):
    """The app directory could not be imported, or it has no usable ``App`` class."""


class SetupConfig(dict[str, Any]):
    """The setup values of an app that declares no ``AppSetup`` model.

    A plain dict (``config["key"]``, ``config.get("key")``, ``isinstance(config, dict)``)
    that also reads keys as attributes (``config.key``, nested dicts too) and offers
    ``model_dump()``, because such apps are usually written against a pydantic model.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return SetupConfig(value) if type(value) is dict else value

    def model_dump(self, **_: Any) -> dict[str, Any]:
        return dict(self)


@dataclass
class LoadedApp:
    """An imported app: its module, its ``App`` instance and its models."""

    name: str
    app_dir: str
    module: types.ModuleType
    app: Any
    setup_model: type[BaseModel] | None
    functions: dict[str, AppFunction] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "functions": {name: fn.describe() for name, fn in self.functions.items()},
            "setup_schema": model_schema(self.setup_model) if self.setup_model else None,
        }

    def setup_args(self, config: dict[str, Any], metadata: object) -> tuple[Any, ...]:
        """The positional arguments for ``app.setup(*args)``.

        ``config`` is validated with ``AppSetup`` when the module has one, even if setup
        takes no argument (pydantic.ValidationError propagates). With no ``AppSetup`` the
        config argument is an instance of the parameter's annotated model, or else a
        ``SetupConfig``. One parameter receives the config when it is annotated with a
        model other than Metadata or named ``config``/``setup``, and the metadata
        otherwise; two receive ``(config, metadata)``.
        """
        validated: Any = self.setup_model.model_validate(config) if self.setup_model else None
        setup = getattr(self.app, "setup", None)
        params = positional_params(setup) if callable(setup) else None
        if not params:
            return ()
        assert setup is not None
        hints = type_hints(setup)
        first = hints.get(params[0].name)
        if len(params) == 1 and not _takes_config(params[0].name, first):
            return (metadata,)
        if validated is None:
            validated = (
                first.model_validate(config)
                if is_model_type(first) and not is_metadata_type(first)
                else SetupConfig(config)
            )
        return (validated,) if len(params) == 1 else (validated, metadata)


def _takes_config(name: str, hint: Any) -> bool:
    if is_metadata_type(hint):
        return False
    return is_model_type(hint) or name in _CONFIG_PARAM_NAMES


def _yaml_name(app_dir: Path) -> str | None:
    for candidate in ("inf.yml", "inf.yaml"):
        path = app_dir / candidate
        if not path.is_file():
            continue
        import yaml  # only for apps with an inf.yml

        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None
        name = document.get("name") if isinstance(document, dict) else None
        return name if isinstance(name, str) and name else None
    return None


def _package_name(app_dir: Path) -> str:
    stem = re.sub(r"[^0-9A-Za-z_]", "_", app_dir.name) or "app"
    return f"_app_{stem}_{next(_load_counter)}"


def _forget_package(package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


def _import_inference(app_dir: Path, package: str) -> types.ModuleType:
    init = app_dir / "__init__.py"
    spec: importlib.machinery.ModuleSpec | None
    if init.is_file():
        spec = importlib.util.spec_from_file_location(
            package, init, submodule_search_locations=[str(app_dir)]
        )
    else:
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        spec.submodule_search_locations = [str(app_dir)]
    if spec is None:
        raise ImportError(f"cannot build a package spec for {app_dir}")
    package_module = importlib.util.module_from_spec(spec)
    sys.modules[package] = package_module
    if spec.loader is not None:
        spec.loader.exec_module(package_module)
    return importlib.import_module(f"{package}.inference")


def load_app(app_dir: str | os.PathLike[str]) -> LoadedApp:
    """Import ``<app_dir>/inference.py``, instantiate its ``App`` and find its functions.

    Raises AppLoadError, chained to the original exception where there is one.
    """
    directory = Path(app_dir).resolve()
    if not directory.is_dir():
        raise AppLoadError(f"app directory {directory} does not exist")
    if not (directory / "inference.py").is_file():
        raise AppLoadError(f"app directory {directory} has no inference.py")
    added_to_path = str(directory) not in sys.path
    if added_to_path:
        sys.path.insert(0, str(directory))
    package = _package_name(directory)
    try:
        module = _import_inference(directory, package)
    except (Exception, SystemExit) as exc:
        _forget_package(package)
        if added_to_path and str(directory) in sys.path:
            sys.path.remove(str(directory))
        raise AppLoadError(
            f"importing {directory / 'inference.py'} failed: {type(exc).__name__}: {exc}"
        ) from exc
    app_class = getattr(module, "App", None)
    if not inspect.isclass(app_class):
        raise AppLoadError(f"{directory / 'inference.py'} defines no App class")
    try:
        app = app_class()
    except Exception as exc:
        raise AppLoadError(f"App() failed: {type(exc).__name__}: {exc}") from exc
    setup_model = getattr(module, "AppSetup", None)
    return LoadedApp(
        name=_yaml_name(directory) or directory.name,
        app_dir=str(directory),
        module=module,
        app=app,
        setup_model=setup_model if is_model_type(setup_model) else None,
        functions=discover_functions(app),
    )
