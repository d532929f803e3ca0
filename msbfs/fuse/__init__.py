"""The FUSE kernel ABI (``abi``) and a transport-free protocol server over a tree (``server``)."""

from msbfs.fuse.server import Deferred, FuseSession, error_reply

__all__ = ["Deferred", "FuseSession", "error_reply"]
