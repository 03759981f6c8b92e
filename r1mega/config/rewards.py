"""Reward configuration (filled in by the rewards work)."""
