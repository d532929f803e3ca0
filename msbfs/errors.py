"""Every error msbfs raises on purpose. Callers catch ``MsbfsError``; the CLI prints
``str(err)`` as one line and exits non-zero."""

from __future__ import annotations

import os


def os_error(code: int) -> OSError:
    """The ``OSError`` a filesystem operation fails with, errno and message as the kernel's
    (one helper for the tree's modules, which answer the guest in errnos)."""
    return OSError(code, os.strerror(code))


class MsbfsError(Exception):
    """Base of every msbfs error."""


class InvalidName(MsbfsError, ValueError):
    """A volume name outside ``[A-Za-z0-9._-]{1,128}`` (or ``.``/``..``)."""


class VolumeExists(MsbfsError):
    """A volume of that name already exists."""


class VolumeNotFound(MsbfsError, LookupError):
    """No volume of that name."""


class VolumeInUse(MsbfsError):
    """The volume is served or mounted by some process."""


class PathEscape(MsbfsError, PermissionError):
    """A path would leave the volume root (absolute, ``..`` above the root, or a symlink
    whose resolution leaves it)."""


class InvalidArgument(MsbfsError, ValueError):
    """An argument that makes no sense (a disk volume without a size, a bad label...)."""


class InvalidMountSpec(MsbfsError, ValueError):
    """A mount given on the command line or as JSON that does not parse or makes no sense."""


class IncompatibleVolume(MsbfsError):
    """``ensure-exists`` found a volume whose kind, quota or capacity differs."""


class DiskError(MsbfsError):
    """Creating, formatting or opening a disk image failed."""


class MountError(MsbfsError):
    """A host mount could not be set up or torn down."""


class LaunchError(MsbfsError):
    """A sandbox could not be started, or a part of it died."""


class ServeError(MsbfsError):
    """``msbfs serve`` cannot start: bad options, an unusable socket or source, a failed sandbox."""
