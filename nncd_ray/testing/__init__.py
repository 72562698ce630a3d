"""Builders of small local models and fixtures for tests and benchmarks (no network)."""
