"""ddp_kbit's metadata lives in pyproject.toml (PEP 621); this file lets tools that
still call ``setup.py`` work."""
from setuptools import setup

setup()
