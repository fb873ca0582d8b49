"""Maintenance sweeps over the runs table: recover stuck runs, clean up orphans, refund."""
