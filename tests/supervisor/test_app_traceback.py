"""The app's frames in its tracebacks, the runtime's hidden."""

from __future__ import annotations

from supervisor.app_traceback import RUNTIME_DIR, for_people

IMPORT_ERROR = f"""Traceback (most recent call last):
  File "{RUNTIME_DIR}app_loader.py", line 177, in load_app
    module = _import_inference(directory, package)
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/usr/lib/python3.11/importlib/__init__.py", line 126, in import_module
    return _bootstrap._gcd_import(name[level:], package, level)
  File "<frozen importlib._bootstrap>", line 1204, in _gcd_import
  File "<frozen importlib._bootstrap_external>", line 940, in exec_module
  File "/apps/broken/inference.py", line 3, in <module>
    raise ImportError("broken: this app cannot be imported")
ImportError: broken: this app cannot be imported

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "{RUNTIME_DIR}runtime.py", line 283, in _load
    self.app = load_app(app_dir)
               ^^^^^^^^^^^^^^^^^
  File "{RUNTIME_DIR}app_loader.py", line 182, in load_app
    raise AppLoadError(
child.app_loader.AppLoadError: importing /apps/broken/inference.py failed
"""

SETUP_ERROR = f"""Traceback (most recent call last):
  File "{RUNTIME_DIR}runtime.py", line 299, in _setup
    await _call(setup, args)
  File "/venv/lib/python3.11/site-packages/anyio/to_thread.py", line 65, in run_sync
    return await get_async_backend().run_sync_in_worker_thread(
  File "/apps/fail/inference.py", line 20, in setup
    explode()
  File "/venv/lib/python3.11/site-packages/torch/nn/module.py", line 5, in load
    raise RuntimeError("no weights")
RuntimeError: no weights
"""


def test_an_import_error_shows_only_the_apps_frame_and_its_error() -> None:
    text = for_people(IMPORT_ERROR)
    assert text.startswith('Traceback (most recent call last):\n  File "/apps/broken/inference.py"')
    assert 'raise ImportError("broken' in text
    assert "ImportError: broken: this app cannot be imported" in text
    assert "app_loader" not in text
    assert "importlib" not in text
    assert "AppLoadError" not in text
    assert "direct cause" not in text
    assert "(6 runtime frames hidden; --debug shows them)" in text


def test_library_frames_the_app_called_stay() -> None:
    text = for_people(SETUP_ERROR)
    assert "/apps/fail/inference.py" in text
    assert "torch/nn/module.py" in text
    assert "anyio" not in text
    assert "runtime.py" not in text
    assert text.count("  File ") == 2


def test_a_traceback_without_app_frames_is_left_alone() -> None:
    only_runtime = (
        f'Traceback (most recent call last):\n  File "{RUNTIME_DIR}runtime.py", line 1, in x\n'
        "child.runtime.Oops: x\n"
    )
    assert for_people(only_runtime) == only_runtime
    plain = "ValueError: no frames at all"
    assert for_people(plain) == plain
