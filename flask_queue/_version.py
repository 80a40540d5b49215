"""The package version, in a module of its own: setup.cfg and tracing.py read it
without importing the package (which imports tracing.py)."""

__version__ = "0.1.0"
