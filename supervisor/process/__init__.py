"""Process mechanics: starting a child (spawn, pool, fork server), its
channel, confinement, and reading its memory. Imports neither the core nor GPU policy."""
