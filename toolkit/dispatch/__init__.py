"""Dispatch: the flag chooses a backend, the run is recorded (with its debit), then handed over."""
