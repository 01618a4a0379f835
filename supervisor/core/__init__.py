"""The core: the public API (Supervisor, App), replicas and their running
children, requests, and the policies applied to them (restart, resources)."""
