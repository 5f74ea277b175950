"""Exception types that stages turn into a clear message and a non-zero exit status."""


class FeropsError(Exception):
    """Base class for errors the user can act on (bad input, missing files, bad params)."""


class DataError(FeropsError):
    """A dataset file is missing, corrupt, or not in the expected format."""


class ParamsError(FeropsError):
    """A value in params.yaml (or on the command line) is invalid."""
