"""The error tree. One root, `cove.Error`, with Modal's subclass names so `except modal.exception.X` works.

Error
├── AuthError
├── ConnectionError
├── ExecutionError
│   └── RemoteError
├── InvalidError
├── NotFoundError
├── AlreadyExistsError
├── ResourceExhaustedError
├── VersionError
├── TimeoutError            (not the builtin; Modal's own)
│   ├── FunctionTimeoutError
│   └── OutputExpiredError
└── ImageBuildError (alias BuildError)

DeprecationError            (a UserWarning subclass, as in Modal)
PendingDeprecationError
"""

from __future__ import annotations

import builtins


class Error(Exception):
    """Root of every error Cove raises on purpose."""


class AuthError(Error):
    """Missing or wrong credentials for the control plane."""


class ConnectionError(Error, builtins.ConnectionError):
    """The control plane could not be reached."""


class ExecutionError(Error):
    """Something went wrong while running a function."""


class RemoteError(ExecutionError):
    """An exception raised inside a container, re-raised locally."""


class InvalidError(Error):
    """A value or a use of the API that cannot work; the message names the fix."""


class NotFoundError(Error):
    """A named object (app, function, secret) does not exist."""


class AlreadyExistsError(Error):
    """A named object exists already."""


class ResourceExhaustedError(Error):
    """A limit (queue, rate) was reached."""


class VersionError(Error):
    """Client and server speak different versions."""


class TimeoutError(Error):
    """Base of Cove's timeouts."""


class FunctionTimeoutError(TimeoutError):
    """A function ran past its `timeout`."""


class OutputExpiredError(TimeoutError):
    """The result of a call is no longer stored."""


class ImageBuildError(Error):
    """An image step failed."""


BuildError = ImageBuildError


class DeprecationError(UserWarning):
    """A deprecated API was used. Modal makes this a UserWarning subclass; so do we."""


class PendingDeprecationError(UserWarning):
    """An API that will be deprecated."""


__all__ = [
    "AlreadyExistsError",
    "AuthError",
    "BuildError",
    "ConnectionError",
    "DeprecationError",
    "Error",
    "ExecutionError",
    "FunctionTimeoutError",
    "ImageBuildError",
    "InvalidError",
    "NotFoundError",
    "OutputExpiredError",
    "PendingDeprecationError",
    "RemoteError",
    "ResourceExhaustedError",
    "TimeoutError",
    "VersionError",
]
