"""The scheduler: owns the job state machine, each job's history, placement and stop."""
