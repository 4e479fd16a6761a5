"""Helpers for testing crmsync and its connectors (fakes, the conformance harness)."""
