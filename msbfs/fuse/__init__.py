"""The FUSE kernel ABI (``abi``) and a sans-I/O protocol server over a tree (``server``)."""

from msbfs.fuse.server import Deferred, FuseSession, error_reply

__all__ = ["Deferred", "FuseSession", "error_reply"]
