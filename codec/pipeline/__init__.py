"""The steps every front end takes, in one place: settings -> plan -> Fitter -> bytes -> figures.

`Compression` is the one entry point for making a file: the CLI, the napari plugin's job, `moec
bench`, `moec batch`, the benchmarks and the tests all drive it, so a file made in one comes out
the same in the others, and what a user is told about it (`Compressed.notes`) reaches each of them.

One job a module: `planning` (settings -> plan, and its Fitter), `trial` (the choice of a model
among candidates), `rate` (the bytes landed in the size window), `compression` (the compression
that uses them) and `evaluation` (the file measured against its original).
"""

from codec.fit.sizing import Plan
from codec.pipeline.compression import Compressed, Compression
from codec.pipeline.evaluation import Evaluation, evaluate
from codec.pipeline.planning import make_plan, new_fitter
from codec.pipeline.rate import SizedFile, file_bytes, file_qsteps, sized_file
from codec.pipeline.trial import Candidate, Trial
from codec.settings import Settings

__all__ = [
    "Candidate",
    "Compressed",
    "Compression",
    "Evaluation",
    "Plan",
    "Settings",
    "SizedFile",
    "Trial",
    "evaluate",
    "file_bytes",
    "file_qsteps",
    "make_plan",
    "new_fitter",
    "sized_file",
]
