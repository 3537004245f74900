"""Malformed inputs for tests/test_fuzz.py, generated at test time (no binary files in git)."""
