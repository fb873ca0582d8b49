"""The runtime: executes one run through the shared lifecycle, whatever transport delivered it."""
