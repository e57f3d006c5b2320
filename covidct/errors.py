"""The failures a stage reports as one ``error:`` line (see ``cli.run``) instead of a traceback.

A leaf module: anything may raise these without importing the code that usually does.
"""


class DataError(RuntimeError):
    """Bad input data; the message names the file (and line) and what to do."""


class ParamsError(ValueError):
    """A parameter is missing or invalid; the message names the key and what it accepts."""


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are neither cached nor downloadable; the message says where to put them."""


class ResourceError(RuntimeError):
    """The machine failed the stage (a helper process killed, e.g. by the OOM killer); the message says which item
    it was working on and what to change."""


KNOWN_ERRORS = (DataError, ParamsError, WeightsUnavailable, ResourceError, FileNotFoundError)
