"""Fixtures for the API tests (defined in apiservice, a uniquely named module)."""

from apiservice import *  # noqa: F403
