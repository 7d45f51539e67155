"""`moec compress` and `moec decompress`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from codec.cli.console import (
    ProgressBar,
    check_distinct,
    check_output,
    check_volume_output,
    clock,
    describe_model,
    memory_limit,
    nbytes,
    region_text,
    to_json,
)
from codec.eval import db_text
from codec.fit.budget import Budget
from codec.settings import Settings, TrainConfig


def cmd_compress(args: argparse.Namespace) -> int:
    import torch

    from codec import pipeline
    from codec.fit.train import resolve_device
    from codec.format import moecfile
    from codec.io.load import load_volume

    device = resolve_device(args.device)  # a missing CUDA device is reported before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    source = Path(args.input)
    output = Path(args.output) if args.output else _default_output(source, args.series)
    check_output(output, args.force, source)
    if output.name.lower().endswith((".nii", ".nii.gz", ".npy")):
        from codec.errors import OutputError

        raise OutputError(f"{output} would be a .moec file under a volume's name; name it {_stem(output)}.moec")
    volume = load_volume(source, args.series, limit=memory_limit(args), compressing=True)
    roi = None
    if args.roi:
        from codec.io.roi import load_roi

        roi = load_roi(args.roi, volume.shape, volume.affine)
    settings, train = _choices(args)
    compression = pipeline.Compression(volume, settings, train, roi)
    plan = compression.plan
    print(
        f"{_input_name(source, volume)}: {' x '.join(map(str, volume.shape))} {volume.stored_dtype.name}, "
        f"{nbytes(volume.raw_bytes)} raw; target {args.ratio:g}x = at most {nbytes(plan.upper_bytes)}",
        file=sys.stderr,
    )
    if compression.trial_text():
        print(compression.trial_text(), file=sys.stderr)
    for candidate in compression.candidates:
        m, quant = candidate.plan.model, candidate.plan.quant
        which = f" ({candidate.name})" if len(compression.candidates) > 1 else ""
        print(
            f"model{which}: {describe_model(m)}; {m.parameter_count():,} parameters, "
            f"{'float16' if quant.float16 else f'{quant.bits}-bit'} weights; device {device.type}",
            file=sys.stderr,
        )
    if roi is not None:
        print(
            f"ROI: {Path(args.roi).name}, {int(roi.sum()):,} voxels ({100 * roi.mean():.2f}%) weighted "
            f"{args.roi_weight:g}x",
            file=sys.stderr,
        )
    budget = Budget.of(train.steps, train.minutes)
    budget_text = f"/{budget.steps} steps" if budget.by_steps else f"/{clock(budget.total)}"
    bar = None if args.quiet else ProgressBar()
    stopped = False
    run = compression.run()
    try:
        for progress in run:
            if bar:
                bar.update(progress, budget_text)
    except KeyboardInterrupt:
        stopped = True
    finally:
        run.close()
        if bar:
            bar.close()
    fitter = compression.fitter
    if stopped and fitter.steps_run:
        print(f"stopped at step {fitter.steps_run}: writing the model trained so far", file=sys.stderr)
    made = compression.encode()
    data = made.data
    for note in made.notes:
        print(f"note: {note}", file=sys.stderr)
    moecfile.write(output, data)
    # Every figure comes from decoding the bytes just written, as a reader of the file would.
    moec = moecfile.read(output)
    evaluation = compression.evaluate(moec)
    _report(args, output, source, volume, compression, made, evaluation, stopped)
    return 0


def _choices(args: argparse.Namespace) -> tuple[Settings, TrainConfig]:
    """The file's settings and the training's, as the options ask."""
    settings = Settings(
        ratio=args.ratio,
        experts=args.experts,
        top_k=args.top_k,
        partition=args.partition,
        bits=args.bits,
        granularity=args.granularity,
        encoder=args.encoder,
        router_features=args.router_input == "features",
        grid_channels=args.grid_channels,
        grid_spacing_power=args.grid_spacing,
        latent_bits=args.latent_bits,
        keep_identity=args.keep_identity,
    )
    train = TrainConfig(
        minutes=args.minutes,
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        balance_weight=args.balance,
        router_pretraining=args.pretrain != "none",
        pretrain_target=args.pretrain if args.pretrain != "none" else TrainConfig.pretrain_target,
        seed=args.seed,
        device=args.device,
        roi_weight=args.roi_weight,
        cubic_from=args.cubic_from,
        sample_activity=args.sample_activity,
    )
    return settings, train


def _report(
    args: argparse.Namespace,
    output: Path,
    source: Path,
    volume: Any,
    compression: Any,
    made: Any,
    evaluation: Any,
    stopped: bool,
) -> None:
    """What was written and how close it is, as JSON or as lines for a person."""
    data = made.data
    q = evaluation.quality
    used = sum(1 for e in evaluation.experts if e.share > 0)
    report = {
        "output": str(output),
        "bytes": len(data),
        "ratio": evaluation.ratio,
        "file_ratio": evaluation.file_ratio,
        "psnr": q.psnr,
        "ssim": q.ssim,
        "steps": made.steps,
        "stages": list(made.stages),
        "experts_used": used,
        "stopped": stopped,
        "notes": list(made.notes),
    }
    if evaluation.roi is not None:
        report["roi"] = asdict(evaluation.roi)
    if args.json:
        print(to_json(report))
        return
    print(f"wrote {output}: {nbytes(len(data))}")
    file_part = (
        f", {evaluation.file_ratio:.1f}x vs {_source_files(source, volume)} ({nbytes(volume.source_bytes or 0)})"
        if evaluation.file_ratio
        else ""
    )
    print(f"  ratio     {evaluation.ratio:.1f}x vs raw voxels ({nbytes(volume.raw_bytes)}){file_part}")
    print(f"  PSNR      {db_text(q.psnr)} (peak {q.peak:g}, decoded from the written file)")
    print(f"  SSIM      {q.ssim:.4f} ({q.ssim_method})")
    if evaluation.roi is not None:
        print(f"  ROI       {region_text(evaluation.roi)}")
    stages = made.stages
    print(
        f"  training  {made.steps} steps (router {stages[0]}, joint {stages[1]}, final {stages[2]}), "
        f"{used} of {compression.plan.model.experts} experts in use"
    )


def _default_output(source: Path, series: str | None) -> Path:
    """Beside the input: NAME.moec for NAME.nii.gz and for a DICOM folder NAME of one series; for
    one series of several, NAME_<series number and description>.moec."""
    from codec.io import dicom

    if source.is_dir() or (source.is_file() and dicom.is_dicom_file(source)):
        folder = (source if source.is_dir() else source.parent).resolve()
        try:
            info, scan = dicom.choose_series(folder, series if series or source.is_dir() else _series_of(source))
        except dicom.DicomError:
            return folder.with_name(folder.name + ".moec")  # the load says what is wrong, in its own words
        if len(scan.series) == 1:
            return folder.with_name(folder.name + ".moec")
        return folder.with_name(f"{folder.name}_{dicom.series_stem(info, scan.series)}.moec")
    return source.with_name(_stem(source) + ".moec")


def _series_of(path: Path) -> str | None:
    from codec.io import dicom

    try:
        return dicom.series_uid_of(path)
    except dicom.DicomError:
        return None


def _input_name(source: Path, volume: Any) -> str:
    """How the first line names the input: the file, or the DICOM series and its folder."""
    if volume.dicom is None:
        return source.name
    d = volume.dicom
    number = f" series {d.series_number}" if d.series_number else ""
    text = f' "{d.series_description}"' if d.series_description else ""
    folder = source if source.is_dir() else source.parent
    return f"{d.modality}{number}{text} in {folder.resolve().name}/"


def _source_files(source: Path, volume: Any) -> str:
    return "its DICOM files" if volume.dicom is not None else source.name


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npy", ".moec"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


#: What writing a DICOM series holds per voxel beside the decoded values: its stored pixels and
#: the float64 temporaries of computing them (codec.io.dicom.write_series).
DICOM_BYTES_PER_VOXEL = 24


def cmd_decompress(args: argparse.Namespace) -> int:
    import torch

    from codec.decode import cost
    from codec.decode.reconstruct import decode_stored, reconstruct
    from codec.errors import MoecError
    from codec.fit.train import resolve_device
    from codec.format import moecfile
    from codec.format.header import MoecMeta
    from codec.io.streaming import WRITE_BYTES, write_volume
    from codec.io.volume import to_stored

    source = Path(args.input)
    output = Path(args.output) if args.output else None
    if output is None and not args.dicom:
        raise MoecError("decompress needs -o OUT.nii.gz, --dicom OUTDIR, or both")
    if output is not None:
        check_volume_output(output, args.force, source)
    for extra in (args.labels, args.confidence):
        if extra:
            check_volume_output(extra, args.force, source, npy=False)
    check_distinct(output, args.labels, args.confidence, args.dicom)
    if args.dicom:
        from codec.io.dicom import check_series_output

        check_series_output(args.dicom, args.force)
    # auto decodes on the CPU, as compress measured the file; a missing CUDA device is reported first.
    device = "cpu" if args.device == "auto" else resolve_device(args.device)
    limit = memory_limit(args)
    # The time estimate is the CPU's: a GPU decodes far faster than it says.
    seconds = cost.max_seconds(args.max_decode_minutes) if torch.device(device).type == "cpu" else None
    grid: dict[str, tuple[int, ...] | None] = {}

    def admit(meta: MoecMeta) -> None:
        """Refuse before the weights are decoded: a file that cannot be written as asked, or whose
        decode would take more memory or time than allowed."""
        if args.dicom and meta.dicom is None:
            raise MoecError(
                f"{source} was not compressed from a DICOM series, so there is no series to write a "
                "derived one of; write it as NIfTI with -o"
            )
        shape = grid["shape"] = _output_grid(meta.shape, args.scale, args.shape)
        # With --dicom the values stay in real units (the series' pixels are made from them, with
        # their own copies); otherwise they go straight into the stored dtype.
        estimate = cost.decode_cost(
            meta,
            shape,
            values=np.float32 if args.dicom else meta.dtype,
            labels=bool(args.labels),
            confidence=bool(args.confidence),
            beside=DICOM_BYTES_PER_VOXEL if args.dicom else 0,
            fixed=WRITE_BYTES,
        )
        cost.check(estimate, limit, seconds, what=f"decoding {source.name} on a {cost.grid_text(estimate.shape)} grid")

    moec = moecfile.read(source, admit=admit)
    meta, shape = moec.meta, grid["shape"]
    tag = f"MoEC lossy {moec.ratio:.0f}x"
    if shape is not None:
        from codec.io.resample import resampled_descrip

        tag = resampled_descrip(tag, shape)
    labels = confidence = None
    if args.dicom:
        recon = reconstruct(
            moec, device=device, shape=shape, labels=bool(args.labels), confidence=bool(args.confidence)
        )
        volume, header, labels, confidence = recon.volume, recon.volume.header, recon.labels, recon.confidence
        if output is not None:
            write_volume(
                output,
                volume.data,
                header,
                dtype=meta.dtype,
                descrip=tag,
                slope=meta.slope,
                inter=meta.inter,
                convert=lambda part: to_stored(part, meta.dtype, meta.slope, meta.inter),
            )
    else:
        stored = decode_stored(moec, shape, labels=bool(args.labels), confidence=bool(args.confidence), device=device)
        header, labels, confidence = stored.header, stored.labels, stored.confidence
        if output is not None:
            write_volume(
                output, stored.values, header, dtype=meta.dtype, descrip=tag, slope=meta.slope, inter=meta.inter
            )
        del stored
    grid_shape = shape if shape is not None else meta.shape
    if output is not None:
        spacing = " x ".join(f"{z:g}" for z in nifti_zooms(header)[:3])
        print(f"wrote {output} ({' x '.join(map(str, grid_shape))} {meta.dtype.name}, {spacing} mm, {tag})")
    if args.dicom and meta.dicom is not None:  # checked above: a file from DICOM
        from codec.io.dicom import digest, write_series

        files = write_series(
            volume,
            meta.dicom,
            args.dicom,
            ratio=moec.ratio,
            source_digest=digest(source.read_bytes()),
            force=args.force,
        )
        under = (
            "under the original's patient and study"
            if meta.dicom.keeps_identity
            else "under a new pseudonymous patient and study"
        )
        print(
            f"wrote {args.dicom} ({len(files)} DICOM slices: a derived {meta.dicom.modality} series marked "
            f"lossy, {tag}, {under})"
        )
    if args.labels and labels is not None:
        write_volume(
            Path(args.labels),
            labels,
            header,
            dtype=np.dtype(np.uint8),
            descrip=f"MoEC experts (label k+1 = expert k), {tag}",
            intent="label",
        )
        print(f"wrote {args.labels} (expert assignment, labels 1..{meta.model.experts})")
    if args.confidence and confidence is not None:
        write_volume(
            Path(args.confidence),
            confidence,
            header,
            dtype=np.dtype(np.float32),
            descrip=f"MoEC gate confidence, {tag}",
        )
        print(f"wrote {args.confidence} (gate confidence, 0..1)")
    return 0


def nifti_zooms(header: bytes) -> tuple[float, ...]:
    from codec.io.volume import nifti_header

    return tuple(float(z) for z in nifti_header(header).get_zooms())


def _output_grid(shape: tuple[int, ...], scale: list[float] | None, size: list[int] | None) -> tuple[int, ...] | None:
    """The grid --scale or --shape asks for (None: the file's own). Scale factors apply to the
    spatial axes; a 4D file keeps its time points."""
    from codec.io.resample import check_shape, spatially_scaled

    rest = tuple(shape[3:])
    if scale is not None:
        grid = spatially_scaled(shape, scale[0] if len(scale) == 1 else tuple(scale))
    elif size is not None:
        grid = check_shape(tuple(size) + (rest if len(size) == 3 else ()), len(shape))
    else:
        return None
    return None if grid == tuple(shape) else grid
