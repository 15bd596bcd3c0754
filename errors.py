"""The one exception hierarchy every numallm error belongs to.

The CLI maps BadInputError to exit status 2 and every other NumallmError to 1.
"""


class NumallmError(Exception):
    """Base class of every error numallm raises on purpose."""


class BadInputError(NumallmError):
    """The user's input (a file, a flag, a request) is wrong; exit status 2."""


class ModelFormatError(BadInputError):
    """A GGUF file is malformed, truncated or uses something we do not support."""


class UnsupportedError(ModelFormatError):
    """A well-formed file asks for an architecture or tensor type we do not implement."""


class TopologyError(NumallmError):
    """The machine's topology could not be read or does not allow the request."""


class ResourceError(NumallmError):
    """Not enough memory, locked-memory allowance or CPUs for the request."""


class UnavailableError(NumallmError):
    """A part of the engine is down for now (a pipeline stage Ray is restarting); retry later."""
