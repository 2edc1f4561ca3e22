"""The local provider: runs the trainer as a subprocess of this machine from a job bundle."""
