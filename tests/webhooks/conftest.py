"""Fixtures for the webhook tests (defined in hookenv, a uniquely named module)."""

from hookenv import *  # noqa: F403
