"""Fixtures for the Tryton tests (defined in trytonenv, a uniquely named module)."""

from trytonenv import *  # noqa: F403
