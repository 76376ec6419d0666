"""The one exception type a user sees as a one-line message (never a traceback), and text from files made fit
to be in one."""

MAX_SHOWN = 80  # characters of a file's text that a message shows


class GpunetError(Exception):
    """Bad input or an unusable setting: the message names the file or option and what is wrong."""


class DataError(GpunetError):
    """A data file that cannot be read as digits."""


class ModelFileError(GpunetError):
    """A model file that is missing, corrupt, not a gpunet model, or does not fit the data."""


class DeviceError(GpunetError):
    """The asked-for device cannot be used."""


def printable(text: str, limit: int = MAX_SHOWN) -> str:
    """Text from a file (a zip member's name, a metadata field) as a message may show it: unprintable characters
    escaped (``\\x1b``, ``\\u202e``), cut to ``limit`` characters. A terminal never receives a file's escape
    sequences, and the message stays one short line."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")
