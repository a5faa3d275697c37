"""Helpers shared by the tests (the tests folder is on sys.path through its conftest.py)."""
