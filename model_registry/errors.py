"""Errors of the model registry, carrying what a user needs to act."""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every registry error."""


class ArtifactNotFound(RegistryError):
    pass


class DuplicateArtifact(RegistryError):
    pass


class IntegrityError(RegistryError):
    """Downloaded bytes whose sha256 is not the one recorded."""


class StoreUnavailable(RegistryError):
    """The store (MongoDB, a directory) cannot be reached or read."""


class ModelTypeMismatch(RegistryError):
    """A model type given (or recorded for the version) that the model itself contradicts."""
