"""Helpers shared by every stage of the pipeline; nothing here is public API."""
