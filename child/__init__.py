"""The runtime inside an app's process: loads one app and serves the protocol.

Started by the supervisor as ``python -m child``; see ``__main__.py`` for the
start-up order and ``runtime.py`` for the serving loop.
"""

__version__ = "0.1.0"
