"""Errors the command-line scripts report as one line and a non-zero exit code."""


class InputError(ValueError):
    """Bad input from the user; the message is one line naming what is wrong."""


class DataError(InputError):
    """Bad input data; the message names the file(s) and the problem."""


class ConfigError(InputError):
    """A config value that cannot work; the message names the field."""
