"""Rollout decisions: statistics, gates (defined once), the comparison report, the controller."""
