"""soca-appliance: the software of a Raspberry Pi smart speaker for Soca AI's Voice Stream.

The build metadata (dependencies, extras, package data, console scripts) lives in
pyproject.toml; this shim only keeps ``python setup.py ...`` working for tools that still
call it. Add dependencies to pyproject.toml, not here.
"""
from setuptools import setup

setup()
