"""Fixtures of the conformance suite (defined in conformenv, a uniquely named module)."""

from conformenv import *  # noqa: F403
