"""Sub-commands of ``msbfs``: one module each, see ``msbfs.cli``."""
