"""Imported by the interpreter at start-up: die before the child's handshake."""

import os
import sys

sys.stderr.write("sup_die_early: dying before the handshake\n")
sys.stderr.flush()
os._exit(7)
