"""The Ray Serve face: app directories as Ray Serve deployments."""
