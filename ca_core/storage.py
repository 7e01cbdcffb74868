"""What the CA core needs of storage: its errors, and one small interface per aggregate.

The core declares these; ``db`` implements them (one SQL implementation over a dialect
adapter, ``db.sql``). Each interface lists only the calls its consumer makes, as step-ca's
``acme/db.go`` does for its ACME API.

Store errors are the core's own error kinds, so every protocol front-end maps them to its
wire form like any other ``CAError``, and none of them catches a store error by name. The
client sees only the public detail of the kind; the cause (driver text) is for the log::

    CAError
    └── StoreError          (never raised itself)
        ├── StoreConflict     Conflict: a uniqueness rule was hit (the caller may retry,
        │                     e.g. with a fresh serial)
        ├── StoreInvalid      BadRequest: the database cannot hold a value it was given
        │                     (a lone surrogate, a NUL byte, an integer or date out of range)
        └── StoreUnavailable  Unavailable: the database cannot be reached or refused
"""

from __future__ import annotations

from ca_core.errors import BadRequest, CAError, Conflict, Unavailable


class StoreError(CAError):
    """A store failure; ``detail`` is what a client may read, ``cause`` what the log gets."""

    public_detail = "the store failed"

    def __init__(self, cause: str = "") -> None:
        super().__init__(self.public_detail)
        self.cause = cause or self.public_detail

    def __str__(self) -> str:
        return self.cause


class StoreConflict(StoreError, Conflict):
    public_detail = "the request conflicts with what is stored"


class StoreInvalid(StoreError, BadRequest):
    public_detail = ("the request holds a value that cannot be stored (invalid text or out "
                     "of range)")


class StoreUnavailable(StoreError, Unavailable):
    public_detail = "the service is unavailable"
