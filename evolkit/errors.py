"""Errors a user can act on. The CLI prints them without a traceback."""


class EvolkitError(Exception):
    """Base class: the message names the file, line or field at fault."""


class ConfigError(EvolkitError):
    pass


class DataError(EvolkitError):
    """Malformed input data (the message names the file and line)."""


class BackendError(EvolkitError):
    pass
