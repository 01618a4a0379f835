"""The child's exit statuses: a contract with the supervisor (see PROTOCOL.md)."""

OK = 0
PROTOCOL_ERROR = 76
"""The supervisor sent something that breaks the protocol (EX_PROTOCOL)."""
LOAD_FAILED = 78
"""The app given on the command line could not be loaded (EX_CONFIG); restarting will not help."""
