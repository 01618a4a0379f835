"""The child's exit statuses: a contract with the supervisor (see PROTOCOL.md)."""

OK = 0
INTERNAL_ERROR = 70
"""The runtime itself failed, e.g. writing to a stdout the supervisor closed (EX_SOFTWARE)."""
PROTOCOL_ERROR = 76
"""The supervisor sent something that breaks the protocol (EX_PROTOCOL)."""
LOAD_FAILED = 78
"""The app given on the command line could not be loaded (EX_CONFIG); restarting will not help."""
