"""MoEC: compress 3D/4D medical volumes into the weights of a mixture-of-experts neural field.

No Qt, napari or magicgui here: the CLI, the napari plugin and the tests drive these functions.
"""

__version__ = "0.1.0"

from codec.errors import MoecError, MoecFormatError, OutputError, RatioError, VolumeError

__all__ = ["__version__", "RatioError", "MoecError", "MoecFormatError", "OutputError", "VolumeError"]
