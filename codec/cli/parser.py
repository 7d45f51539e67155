"""The `moec` command line's options: every default and choice list read from codec.settings."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from codec import __version__
from codec import settings as choices
from codec.cli.batch import cmd_batch
from codec.cli.bench import CODEC_KEYS, cmd_bench
from codec.cli.compress import cmd_compress, cmd_decompress
from codec.cli.examine import cmd_eval, cmd_info, cmd_sample
from codec.settings import Settings, TrainConfig


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} must be positive")
        return value

    return parse


def _experts(text: str) -> int | None:
    """A number of experts, or auto (None): the compression tries codec.settings.AUTO_EXPERTS."""
    return None if text == "auto" else _positive(int)(text)


def _latent_bits(text: str) -> float | None:
    """Coded bits per latent, or auto (None): the compression tries codec.settings.AUTO_LATENT_BITS."""
    if text == "auto":
        return None
    value = _positive(float)(text)
    if not 0.25 <= value <= 8:
        raise argparse.ArgumentTypeError(f"{text} must be auto or 0.25 to 8")
    return value


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return value


def _size(text: str) -> int:
    from codec.io.limits import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit_options(parser: argparse.ArgumentParser, decode: bool = False) -> None:
    """The bounds a command checks against what a file declares, before it reads or allocates."""
    parser.add_argument(
        "--max-memory",
        type=_size,
        metavar="SIZE",
        help="the most memory the command may plan to hold, estimated from the file's header before "
        "anything is loaded or decoded (8G, 512M; 0: no limit; default: half of this "
        "machine's memory)",
    )
    if decode:
        parser.add_argument(
            "--max-decode-minutes",
            type=float,
            metavar="M",
            help="refuse a decode estimated from the file's network and grid to take longer than "
            "this on this machine (0: no limit; default 10)",
        )


def _identity_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-identity",
        action="store_true",
        help="keep the patient's name, ID and birth date and the study of a DICOM input in the .moec "
        "file, so that decompress --dicom files the reconstruction under them (default: the "
        "file holds no patient identity, and decompress --dicom makes a pseudonymous patient)",
    )


def _series_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--series",
        metavar="UID",
        help="the SeriesInstanceUID to read where a DICOM folder holds several (moec info FOLDER lists them)",
    )


def _volume_options(parser: argparse.ArgumentParser, file_: Any, train: Any, each: str) -> None:
    """--ratio, --minutes | --steps and --experts: what `compress` and `batch` ask of every file."""
    parser.add_argument(
        "--ratio",
        type=_positive(float),
        default=file_.ratio,
        help=f"compression ratio vs the raw voxels; the file lands in [R, 1.05 R] (default {file_.ratio:g})",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--minutes",
        type=_positive(float),
        default=train.minutes,
        help=f"training time {each} (default {train.minutes:g})",
    )
    budget.add_argument("--steps", type=_positive(int), help=f"training steps {each} instead (reproducible)")
    auto = " or ".join(map(str, choices.AUTO_EXPERTS))
    parser.add_argument(
        "--experts",
        type=_experts,
        default=file_.experts,
        help=f"number of experts (default {'auto' if file_.experts is None else file_.experts}; "
        f"auto: a short trial of {auto} on the latent grid, the better kept (and with "
        "--latent-bits auto, then of its rates); 1 = one SIREN)",
    )


def _run_flags(parser: argparse.ArgumentParser, force: str, quiet: str, json: str) -> None:
    """--force, --quiet and --json, each with what it means to this command."""
    parser.add_argument("--force", action="store_true", help=force)
    parser.add_argument("--quiet", action="store_true", help=quiet)
    parser.add_argument("--json", action="store_true", help=json)


def _compress(sub: argparse._SubParsersAction, file_: Settings, train: TrainConfig) -> None:
    c = sub.add_parser("compress", help="NIfTI/NumPy volume or DICOM series -> .moec file")
    c.add_argument("input", help=".nii, .nii.gz or .npy volume (3D or 4D), or a DICOM series' folder")
    _series_option(c)
    c.add_argument("-o", "--output", help="the .moec file to write (default: beside the input)")
    _volume_options(c, file_, train, "per file")
    c.add_argument(
        "--top-k",
        type=int,
        choices=choices.TOP_K,
        default=file_.top_k,
        help=f"experts per voxel (default {file_.top_k})",
    )
    c.add_argument(
        "--partition",
        choices=choices.PARTITIONS,
        default=file_.partition,
        help=f"learned router or the fixed block split baseline (default {file_.partition})",
    )
    c.add_argument(
        "--encoder",
        choices=choices.ENCODERS,
        default=file_.encoder,
        help="shared encoder: a latent grid or a SIREN layer; auto: the grid for 3D volumes with a "
        f"learned router, 2+ experts and quantized weights, else SIREN (default {file_.encoder})",
    )
    c.add_argument(
        "--router-input",
        choices=choices.ROUTER_INPUTS,
        default="features" if file_.router_features else "coordinates",
        help="what the router reads: the coordinates and the encoder features (the design's router), or "
        "the coordinates alone (measured in docs/benchmarks.md) (default "
        f"{'features' if file_.router_features else 'coordinates'})",
    )
    c.add_argument(
        "--grid-channels",
        type=_positive(int),
        default=file_.grid_channels,
        metavar="C",
        help=f"latents per grid node and level, for the latent grid (default {file_.grid_channels}; "
        "fewer channels buy a finer grid in the same bytes)",
    )
    rates = " or ".join(f"{b:g}" for b in choices.AUTO_LATENT_BITS)
    c.add_argument(
        "--latent-bits",
        type=_latent_bits,
        default=file_.latent_bits,
        metavar="B",
        help="coded bits per latent the latent grid is planned at: fewer buy more latents, each "
        f"coarser; auto: with --experts auto, a trial of {rates} for the kept number of "
        f"experts, else {rates.split()[0]} "
        f"(default {'auto' if file_.latent_bits is None else file_.latent_bits})",
    )
    c.add_argument(
        "--grid-spacing",
        type=_unit_interval,
        default=file_.grid_spacing_power,
        metavar="P",
        help="how the latent grid follows the voxel size on thick slices (voxels 2.5 times longer on "
        "one axis than on another): nodes per axis in proportion to voxels x (voxel size / "
        f"largest)^P; 0 the voxels' proportions, 1 equal millimetres (default "
        f"{file_.grid_spacing_power:g})",
    )
    c.add_argument(
        "--cubic-from",
        type=_unit_interval,
        default=train.cubic_from,
        metavar="F",
        help="the share of the budget after which the latent grid is read by cubic interpolation, "
        f"trilinear before; 1 = trilinear throughout (default {train.cubic_from:g})",
    )
    c.add_argument(
        "--bits",
        type=int,
        default=file_.bits,
        help=f"weight bit width before entropy coding; 16 = float16 (default {file_.bits})",
    )
    c.add_argument(
        "--granularity",
        choices=choices.GRANULARITIES,
        default=file_.granularity,
        help=f"one step per tensor or per output channel (default {file_.granularity})",
    )
    c.add_argument("--seed", type=int, default=train.seed)
    c.add_argument("--device", choices=choices.DEVICES, default=train.device)
    c.add_argument("--threads", type=_positive(int), help="torch CPU threads (default: torch's choice)")
    c.add_argument("--lr", type=_positive(float), default=train.lr, help=f"learning rate (default {train.lr:g})")
    c.add_argument(
        "--batch",
        type=_positive(int),
        default=train.batch_size,
        help=f"coordinates per step (default {train.batch_size})",
    )
    c.add_argument(
        "--sample-activity",
        type=_unit_interval,
        default=train.sample_activity,
        metavar="A",
        help="the share of each batch drawn where the volume changes (edges, texture) rather than "
        "uniformly, each draw weighted back so the loss is unchanged; 0 = uniform "
        f"(default {train.sample_activity:g})",
    )
    c.add_argument(
        "--balance",
        type=float,
        default=train.balance_weight,
        help=f"balancing loss weight (default {train.balance_weight:g})",
    )
    c.add_argument(
        "--roi",
        metavar="MASK",
        help="a NIfTI mask on the volume's grid (non-zero = region of interest, e.g. a lesion): its "
        "squared error counts --roi-weight times more in training, so it comes out sharper",
    )
    c.add_argument(
        "--roi-weight",
        type=float,
        default=train.roi_weight,
        metavar="W",
        help=f"how much more an ROI voxel's squared error counts (default {train.roi_weight:g})",
    )
    pretrain = train.pretrain_target if train.router_pretraining else "none"
    c.add_argument(
        "--pretrain",
        choices=(*choices.PRETRAIN_TARGETS, "none"),
        default=pretrain,
        help=f"the router's starting partition: intensity clusters, blocks, or none (an ablation) (default {pretrain})",
    )
    _identity_option(c)
    _limit_options(c)
    _run_flags(c, force="replace an existing output file", quiet="no progress bar", json="print the result as JSON")
    c.set_defaults(run=cmd_compress)


def _decompress(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("decompress", help=".moec file -> NIfTI volume or DICOM series")
    d.add_argument("input")
    d.add_argument("-o", "--output", help=".nii, .nii.gz or .npy to write")
    d.add_argument(
        "--dicom",
        metavar="OUTDIR",
        help="write the reconstruction as a DICOM series in this folder (a derived series, marked "
        "lossy, under the original's patient and study; for files compressed from DICOM)",
    )
    d.add_argument("--labels", help="also write the expert assignment (uint8, expert k as k+1) as NIfTI")
    d.add_argument("--confidence", help="also write the gate confidence (float32) as NIfTI")
    grid = d.add_mutually_exclusive_group()
    grid.add_argument(
        "--scale",
        type=float,
        nargs="+",
        metavar="S",
        help="decode on another grid over the same box: voxels per axis times S (one factor, or one "
        "per spatial axis: --scale 1 1 5 gives 1 mm slices from a 5 mm CT); the affine follows",
    )
    grid.add_argument("--shape", type=int, nargs="+", metavar="N", help="decode on a grid of these voxels per axis")
    d.add_argument("--device", choices=choices.DEVICES, default="cpu")
    d.add_argument("--force", action="store_true", help="replace existing output files")
    _limit_options(d, decode=True)
    d.set_defaults(run=cmd_decompress)


def _info(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("info", help="describe a .moec file, or list the DICOM series of a folder")
    i.add_argument("input")
    i.add_argument("--json", action="store_true")
    _limit_options(i, decode=True)
    i.set_defaults(run=cmd_info)


def _eval(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="measure a .moec file against the original volume")
    e.add_argument("original", help="the original: a NIfTI/NumPy file or a DICOM series' folder")
    e.add_argument("input")
    _series_option(e)
    e.add_argument("--roi", metavar="MASK", help="also measure inside and outside this NIfTI mask (non-zero = inside)")
    e.add_argument("--json", action="store_true")
    _limit_options(e, decode=True)
    e.set_defaults(run=cmd_eval)


def _bench(sub: argparse._SubParsersAction, train: TrainConfig) -> None:
    b = sub.add_parser(
        "bench", help="rate-distortion of MoEC against JPEG 2000, HEVC and H.264 on one volume or several"
    )
    b.add_argument(
        "input",
        nargs="+",
        help=".nii, .nii.gz or .npy volume, or a DICOM series' folder; with several, "
        "each is benchmarked in --out/NAME and results.md has a table per volume",
    )
    _series_option(b)
    b.add_argument("--ratios", type=_positive(float), nargs="+", default=list(choices.BENCH_RATIOS))
    bench_budget = b.add_mutually_exclusive_group()
    bench_budget.add_argument(
        "--minutes",
        type=_positive(float),
        default=train.minutes,
        help=f"MoEC training time per cell (default {train.minutes:g})",
    )
    bench_budget.add_argument("--steps", type=_positive(int), help="MoEC training steps per cell instead")
    b.add_argument(
        "--codecs",
        nargs="*",
        choices=sorted(CODEC_KEYS),
        default=sorted(CODEC_KEYS),
        help="classical codecs to run (default: all that are installed)",
    )
    b.add_argument(
        "--ablations",
        action="store_true",
        help="also the ablations (experts, top-2, balancing, pretraining) at --ablation-ratio",
    )
    b.add_argument("--ablation-ratio", type=_positive(float), default=choices.ABLATION_RATIO)
    b.add_argument("--classical-only", action="store_true", help="skip the MoEC cells")
    b.add_argument(
        "--rows",
        choices=choices.BENCH_ROWS,
        default=choices.BENCH_ROWS[0],
        help="the MoEC rows: all, or those the verdicts read (the claim's three, the control and the default)",
    )
    b.add_argument("--out", default="moec-bench", help="folder for cells, results.json, results.md, rd.png")
    b.add_argument("--seed", type=int, default=train.seed, help="the (first) training seed of every MoEC cell")
    b.add_argument(
        "--seeds",
        type=_positive(int),
        default=1,
        help="seeds per cell of the rows the verdict reads (the claim's three and the control) and of "
        "the ablations, from --seed up; the tables show their mean, the verdict whether the order "
        "holds on every seed",
    )
    b.add_argument("--threads", type=_positive(int))
    b.set_defaults(run=cmd_bench)


def _batch(sub: argparse._SubParsersAction, file_: Settings, train: TrainConfig) -> None:
    a = sub.add_parser(
        "batch",
        help="every volume of a folder (NIfTI files, DICOM series) -> .moec files, on dask",
        description="Compress every NIfTI file and DICOM series under INPUT_DIR into OUT_DIR, "
        "mirroring the folder tree, on a local dask cluster or an existing one. "
        "OUT_DIR/manifest.csv records each volume as it finishes; run the same command "
        "again to skip finished volumes and retry the others.",
    )
    a.add_argument("input", metavar="INPUT_DIR")
    a.add_argument(
        "-o", "--output", metavar="OUT_DIR", required=True, help="folder for the .moec files and the manifest"
    )
    _volume_options(a, file_, train, "per volume")
    a.add_argument("--seed", type=int, default=train.seed)
    a.add_argument(
        "--batch",
        type=_positive(int),
        default=train.batch_size,
        help=f"coordinates per step (default {train.batch_size})",
    )
    a.add_argument(
        "--device",
        choices=choices.DEVICES,
        default=train.device,
        help=f"where each task trains (auto: a worker's GPU when it has one; default {train.device})",
    )
    a.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a running dask scheduler (tcp://host:8786, or tls://host:8786 with the certificates set in "
        "dask's own configuration, see the README) to send the volumes to; the workers must see "
        "INPUT_DIR and OUT_DIR at the same paths (default: a local cluster on this machine)",
    )
    a.add_argument(
        "--workers",
        type=_positive(int),
        help="local worker processes (default: one per core, as far as volumes and memory allow)",
    )
    a.add_argument(
        "--threads",
        type=_positive(int),
        help="torch threads per volume (default: the cores shared out among the workers)",
    )
    a.add_argument("--report", metavar="DIR", help="also write DIR/report.md and DIR/cohort.png (needs matplotlib)")
    _identity_option(a)
    _limit_options(a)
    _run_flags(
        a,
        force="compress again volumes that were finished with other settings",
        quiet="no progress bar or per-volume lines",
        json="print the manifest's rows as JSON instead of the table",
    )
    a.set_defaults(run=cmd_batch)


def _sample(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sample", help="write the sample phantom (synthetic CT) as NIfTI")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--labels", help="also write its tissue labels")
    s.add_argument("--shape", type=_positive(int), nargs=3, default=(96, 80, 48), metavar=("X", "Y", "Z"))
    s.add_argument("--force", action="store_true")
    s.set_defaults(run=cmd_sample)


def build_parser() -> argparse.ArgumentParser:
    # Every default and choice list comes from codec.settings: changing one there changes it here.
    file_, train = choices.Settings(), choices.TrainConfig()

    parser = argparse.ArgumentParser(
        prog="moec",
        description="Compress 3D/4D medical volumes with a mixture-of-experts neural representation (MoEC).",
    )
    parser.add_argument("--version", action="version", version=f"moec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _compress(sub, file_, train)
    _decompress(sub)
    _info(sub)
    _eval(sub)
    _bench(sub, train)
    _batch(sub, file_, train)
    _sample(sub)
    return parser
