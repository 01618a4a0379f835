"""What an app runs in: its configuration and secrets, its interpreter
and packages (Python and Node.js), built and cached."""
