# setuptools reads the project metadata from pyproject.toml; this file only exists
# because cffi_modules is a setup() keyword that pyproject.toml cannot express.
from setuptools import setup

setup(cffi_modules=["csrc/build_native.py:ffibuilder"])
