"""The one exception type a user sees as a one-line message (never a traceback)."""


class GpunetError(Exception):
    """Bad input or an unusable setting: the message names the file or option and what is wrong."""


class DataError(GpunetError):
    """A data file that cannot be read as digits."""


class ModelFileError(GpunetError):
    """A model file that is missing, corrupt, not a gpunet model, or does not fit the data."""


class DeviceError(GpunetError):
    """The asked-for device cannot be used."""
