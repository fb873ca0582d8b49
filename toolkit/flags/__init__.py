"""Percentage rollout flags: an OpenFeature provider over the rollouts table."""
