"""The HTTP face: the ASGI server, wire format, files, limits, OpenAPI, pages,
metrics and logs."""
