"""Kept so ``python -m tools.guest build`` still works from a checkout: the builder is
``msbfs/guest`` (``msbfs guest build``), part of the installed package."""
