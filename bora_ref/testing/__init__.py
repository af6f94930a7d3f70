"""Test oracle for BoRA implementations (see :mod:`bora_ref.testing.strategies`)."""

from __future__ import annotations

from . import strategies

__all__ = ["strategies"]
