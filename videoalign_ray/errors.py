"""Errors a user can fix without reading a traceback: a bad flag or config value, bad input data, a model
folder that is not there. Jobs print these as one line and exit 2; every other exception is a bug (or an
environment failure) and shows its traceback."""

from __future__ import annotations


class UserInputError(Exception):
    """Base of the errors whose message alone tells the user what to fix."""


class ConfigError(UserInputError, ValueError):
    """A config key is unknown or its value is invalid; the message names the key."""


class DataError(UserInputError, ValueError):
    """The input data cannot be used (no usable row, too many rejects, unreadable table); names the file."""


class ModelPathError(UserInputError, FileNotFoundError):
    """A model or checkpoint folder is missing or lacks a required part; names the path."""


class FitTimeoutError(UserInputError, TimeoutError):
    """A Ray Train run did not finish within its timeout (``--fit-timeout-s``); names the run, the workers asked
    for and the cluster's free resources."""
