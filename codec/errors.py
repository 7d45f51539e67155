"""The typed errors of the codec.

Every failure a user can cause (a bad file, an impossible ratio, a cancelled run) is one of these,
so the CLI and the plugin can turn it into one readable line instead of a traceback.
"""

from __future__ import annotations


class MoecError(Exception):
    """Base of every error the codec raises on purpose."""


class VolumeError(MoecError, ValueError):
    """The input is not a volume the codec can compress (wrong type, dimensionality, NaNs, empty)."""


class RatioError(MoecError, ValueError):
    """The requested ratio cannot be met; the message names the reachable range."""

    def __init__(self, message: str, highest: float | None = None, lowest: float | None = None):
        super().__init__(message)
        self.highest = highest
        self.lowest = lowest


class MoecFormatError(MoecError, ValueError):
    """A .moec file is truncated, corrupt, of an unknown version or holds values out of range."""


class OutputError(MoecError, ValueError):
    """An output path is unusable, for example it would overwrite the command's own input."""


class DicomError(VolumeError):
    """A folder or file is not a DICOM series the codec can read (or a reconstruction cannot be
    written as one): mixed image sizes, missing positions, an undecodable transfer syntax, no images."""


class SeriesChoiceError(DicomError):
    """A folder holds several DICOM series and none was chosen; `series` lists them (codec.io.dicom.SeriesInfo)."""

    def __init__(self, message: str, series: tuple = ()):
        super().__init__(message)
        self.series = tuple(series)


class ResourceLimitError(MoecError, ValueError):
    """A load or a decode would need more memory or time than the limit allows (codec.io.limits);
    the message gives the estimate, the limit and the option that raises it."""
