"""Make ``import inferencesh`` work in an app environment that lacks the SDK.

The check uses ``importlib.util.find_spec`` instead of importing: the real SDK takes
about 200 ms to import (it pulls in its HTTP client and generated types), and the child
should pay that only when the app itself imports it.
"""

from __future__ import annotations

import importlib.util
import sys
import types

from . import sdk_types

MODULE_NAME = "inferencesh"
EXPORTS = (
    "BaseApp",
    "BaseAppInput",
    "BaseAppOutput",
    "BaseAppSetup",
    "File",
    "Metadata",
    "function",
)


def build_module() -> types.ModuleType:
    """A fresh ``inferencesh`` stand-in module; it is not registered anywhere."""
    module = types.ModuleType(MODULE_NAME, "appvisor's stand-in for the inferencesh SDK")
    for name in EXPORTS:
        setattr(module, name, getattr(sdk_types, name))
    module.__dict__.update(
        __all__=list(EXPORTS), __version__="0+appvisor.fallback", __appvisor_fallback__=True
    )
    return module


def is_fallback(module: types.ModuleType | None) -> bool:
    return bool(getattr(module, "__appvisor_fallback__", False))


def install_if_missing() -> bool:
    """Register the stand-in as ``inferencesh`` unless the real SDK is importable.

    A ``None`` entry in ``sys.modules`` (an import that is blocked) counts as missing.
    Returns True when the stand-in was installed by this call.
    """
    if sys.modules.get(MODULE_NAME) is not None:
        return False
    if MODULE_NAME not in sys.modules:
        try:
            if importlib.util.find_spec(MODULE_NAME) is not None:
                return False
        except (ImportError, ValueError):
            pass
    sys.modules[MODULE_NAME] = build_module()
    return True
