"""GRPO objective configuration (filled in by the algorithms work)."""
