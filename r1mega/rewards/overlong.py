"""DAPO's soft overlong punishment.

With L_max the maximum response length and L_cache the soft interval:

    penalty(L) = 0                              if L <= L_max - L_cache
               = ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
               = -1                             if L > L_max

so it falls linearly from 0 to -1 over the last L_cache tokens. It is added to the reward (times a weight).
"""
from __future__ import annotations

from typing import Optional


def overlong_penalty(length: Optional[int], max_tokens: Optional[int], cache_tokens: int) -> float:
    """The penalty (in [-1, 0]) for a response of ``length`` tokens; 0 when either length is unknown."""
    if length is None or max_tokens is None:
        return 0.0
    if cache_tokens <= 0:
        raise ValueError(f"cache_tokens must be positive, got {cache_tokens}")
    start = max_tokens - cache_tokens
    if length <= start:
        return 0.0
    if length > max_tokens:
        return -1.0
    return (start - length) / cache_tokens


__all__ = ["overlong_penalty"]
