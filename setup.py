# setuptools reads the project metadata from pyproject.toml; this file only exists
# because cffi_modules is a setup() keyword that pyproject.toml cannot express.
from setuptools import setup

# Two extensions: msbfs._native (all of csrc/) and vhost._native (the virtqueue and the
# driver side's request loop alone, so the vhost package stands without msbfs).
setup(cffi_modules=["csrc/build_native.py:ffibuilder", "csrc/build_vhost.py:ffibuilder"])
