"""Local stand-ins for the clouds' wire APIs. Each executes the workload it is handed on this machine, so
TuneFleet's real start commands and trainer run; each can inject faults. Tests and
``tunefleet up --sandbox`` use them."""
