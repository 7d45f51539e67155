"""`moec compress | decompress | info | eval | bench | batch | sample`: the codec on the command line.

Errors are one readable line on stderr and a non-zero exit status, never a traceback (set
MOEC_DEBUG=1 to see one). Outputs are written atomically and never over the command's own input;
an existing output is kept unless --force is given.
"""

from __future__ import annotations

# OpenMP's wait policy is left to the user (OMP_WAIT_POLICY=PASSIVE before the run): on an idle
# 2-core machine the default, spinning threads, trains 1.5x faster than PASSIVE (38 s against 58 s
# for 2,000 steps of the 256x grid model); PASSIVE pays off only when another busy process shares
# the cores, as the napari viewer does (moec_napari sets it).
import argparse
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

EXIT_ERROR = 1
EXIT_USAGE = 2


# --- formatting -------------------------------------------------------------------------------------

def _bytes(n: int) -> str:
    return f"{n:,} bytes"


def _db(x: float) -> str:
    if math.isnan(x):
        return "undefined"
    return "inf (exact)" if math.isinf(x) else f"{x:.2f} dB"


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class ProgressBar:
    """A one-line progress bar on stderr; a line every 10% when stderr is not a terminal."""

    def __init__(self, stream=sys.stderr, width: int = 28):
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.last = 0.0
        self.last_decile = -1

    def update(self, p, budget_text: str) -> None:
        now = time.monotonic()
        decile = int(p.fraction * 10)
        if self.tty and now - self.last < 0.2:
            return
        if not self.tty and decile == self.last_decile:
            return
        self.last, self.last_decile = now, decile
        filled = int(self.width * p.fraction)
        psnr = "" if math.isnan(p.psnr) else f" PSNR {p.psnr:5.2f} dB"
        text = (f"[{'#' * filled}{'.' * (self.width - filled)}] {100 * p.fraction:3.0f}% step {p.step}"
                f" {p.stage:<6} loss {p.loss:.5f}{psnr} {_clock(p.seconds)}{budget_text}")
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(150))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _json(value) -> str:
    """JSON that every parser reads: an undefined figure (the PSNR of a constant volume) is null,
    not the NaN or Infinity that Python's json module writes by default."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False)


def _check_output(path: Path, force: bool, *inputs) -> None:
    """Everything that would stop the write, said before the work that precedes it."""
    from .errors import OutputError
    from .files import check_writable, refuse_overwrite

    refuse_overwrite(path, *inputs)
    check_writable(path)
    if path.exists() and not force:
        raise OutputError(f"{path} exists; use --force to replace it")


def _check_volume_output(path, force: bool, *inputs, npy: bool = True) -> None:
    from .volume import check_volume_name

    _check_output(Path(path), force, *inputs)
    check_volume_name(path, npy=npy)


def _check_distinct(*paths) -> None:
    from .errors import OutputError

    seen: dict[Path, object] = {}
    for path in paths:
        if path is not None:
            where = Path(path).resolve()
            if where in seen:
                raise OutputError(f"{seen[where]} and {path} name the same file; give each output its own name")
            seen[where] = path


# --- commands ---------------------------------------------------------------------------------------

def cmd_compress(args) -> int:
    import torch

    from . import pack, pipeline
    from .train import TrainConfig, resolve_device
    from .volume import load_volume

    device = resolve_device(args.device)  # a missing CUDA device is reported before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    source = Path(args.input)
    output = Path(args.output) if args.output else _default_output(source, args.series)
    _check_output(output, args.force, source)
    if output.name.lower().endswith((".nii", ".nii.gz", ".npy")):
        from .errors import OutputError
        raise OutputError(f"{output} would be a .moec file under a volume's name; name it {_stem(output)}.moec")
    volume = load_volume(source, args.series)
    roi = None
    if args.roi:
        from .roi import load_roi

        roi = load_roi(args.roi, volume.shape, volume.affine)
    settings = pipeline.Settings(ratio=args.ratio, experts=args.experts, top_k=args.top_k,
                                 partition=args.partition, bits=args.bits, granularity=args.granularity,
                                 encoder=args.encoder, router_features=args.router_input == "features",
                                 grid_channels=args.grid_channels, grid_spacing_power=args.grid_spacing)
    train = TrainConfig(minutes=args.minutes, steps=args.steps, batch_size=args.batch, lr=args.lr,
                        balance_weight=args.balance, router_pretraining=args.pretrain != "none",
                        pretrain_target="blocks" if args.pretrain == "blocks" else "clusters",
                        seed=args.seed, device=args.device, roi_weight=args.roi_weight)
    session = pipeline.Compression(volume, settings, train, roi)
    plan = session.plan
    m = plan.model
    print(f"{_input_name(source, volume)}: {' x '.join(map(str, volume.shape))} {volume.dtype.name}, "
          f"{_bytes(volume.raw_bytes)} raw; target {args.ratio:g}x = at most {_bytes(plan.upper_bytes)}",
          file=sys.stderr)
    print(f"model: {_describe_model(m)}; {m.parameter_count():,} parameters, "
          f"{'float16' if plan.quant.float16 else f'{plan.quant.bits}-bit'} weights; device {device.type}",
          file=sys.stderr)
    if roi is not None:
        print(f"ROI: {Path(args.roi).name}, {int(roi.sum()):,} voxels ({100 * roi.mean():.2f}%) weighted "
              f"{args.roi_weight:g}x", file=sys.stderr)
    budget_text = f"/{_clock(60 * train.minutes)}" if args.steps is None else f"/{args.steps} steps"
    bar = None if args.quiet else ProgressBar()
    stopped = False
    run = session.run()
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
    fitter = session.fitter
    if stopped and fitter.steps_run:
        print(f"stopped at step {fitter.steps_run}: writing the model trained so far", file=sys.stderr)
    made = session.encode()
    data = made.data
    for note in made.notes:
        print(f"note: {note}", file=sys.stderr)
    pack.write(output, data)
    # Every figure comes from decoding the bytes just written, as a reader of the file would.
    moec = pack.read(output)
    evaluation = session.evaluate(moec)
    q = evaluation.quality
    used = sum(1 for e in evaluation.experts if e.share > 0)
    report = {
        "output": str(output), "bytes": len(data), "ratio": evaluation.ratio, "file_ratio": evaluation.file_ratio,
        "psnr": q.psnr, "ssim": q.ssim, "steps": made.steps, "stages": list(made.stages),
        "experts_used": used, "stopped": stopped, "notes": list(made.notes),
    }
    if evaluation.roi is not None:
        report["roi"] = asdict(evaluation.roi)
    if args.json:
        print(_json(report))
        return 0
    print(f"wrote {output}: {_bytes(len(data))}")
    file_part = (f", {evaluation.file_ratio:.1f}x vs {_source_files(source, volume)} "
                 f"({_bytes(volume.source_bytes or 0)})" if evaluation.file_ratio else "")
    print(f"  ratio     {evaluation.ratio:.1f}x vs raw voxels ({_bytes(volume.raw_bytes)}){file_part}")
    print(f"  PSNR      {_db(q.psnr)} (peak {q.peak:g}, decoded from the written file)")
    print(f"  SSIM      {q.ssim:.4f} ({q.ssim_method})")
    if evaluation.roi is not None:
        print(f"  ROI       {_region_text(evaluation.roi)}")
    stages = made.stages
    print(f"  training  {made.steps} steps (router {stages[0]}, joint {stages[1]}, final {stages[2]}), "
          f"{used} of {m.experts} experts in use")
    return 0


def _default_output(source: Path, series: str | None) -> Path:
    """Beside the input: NAME.moec for NAME.nii.gz and for a DICOM folder NAME of one series; for
    one series of several, NAME_<series number and description>.moec."""
    from . import dicom

    if source.is_dir() or (source.is_file() and dicom.is_dicom_file(source)):
        folder = (source if source.is_dir() else source.parent).resolve()
        try:
            info, scan = dicom.choose_series(folder, series if series or source.is_dir() else _series_of(source))
        except dicom.DicomError:
            return folder.with_name(folder.name + ".moec")  # the load says what is wrong, in its own words
        stem = dicom.series_stem(info, scan.series)
        return folder.with_name(stem + ".moec" if stem == folder.name else f"{folder.name}_{stem}.moec")
    return source.with_name(_stem(source) + ".moec")


def _series_of(path: Path) -> str | None:
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID", "")).strip() or None
    except Exception:
        return None


def _input_name(source: Path, volume) -> str:
    """How the first line names the input: the file, or the DICOM series and its folder."""
    if volume.dicom is None:
        return source.name
    d = volume.dicom
    number = f" series {d.series_number}" if d.series_number else ""
    text = f' "{d.series_description}"' if d.series_description else ""
    folder = source if source.is_dir() else source.parent
    return f"{d.modality}{number}{text} in {folder.resolve().name}/"


def _source_files(source: Path, volume) -> str:
    return "its DICOM files" if volume.dicom is not None else source.name


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npy", ".moec"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _describe_model(m) -> str:
    router = f"router {m.router_width}" + ("" if m.router_features else " on the coordinates alone")
    if m.partition == "blocks":
        grid = "x".join(map(str, m.block_grid))
        return f"block partition {grid} ({m.experts} SIRENs of {m.expert_layers}x{m.expert_width})"
    if m.encoder == "grid":
        # A grid whose thick-slice axis holds is described level by level: its levels are not halvings.
        levels = (" > ".join("x".join(map(str, r)) for r in m.grid_resolutions()) if m.grid_hold
                  else "x".join(map(str, m.grid_finest)))
        channels = f"{m.grid_channels} channel{'s' if m.grid_channels != 1 else ''}"
        encoder = f"latent grid {levels}, {m.grid_levels} levels x {channels} ({m.latent_count():,} latents)"
        if m.experts == 1:
            return f"{encoder}; one sine MLP {m.expert_layers}x{m.expert_width}"
        return (f"{encoder}; learned partition, {m.experts} experts, top-{m.top_k}; {router}, "
                f"experts {m.expert_layers}x{m.expert_width}")
    if m.experts == 1:
        return f"single SIREN ({m.encoder_layers + m.expert_layers} sine layers of {m.expert_width})"
    return (f"learned partition, {m.experts} experts, top-{m.top_k}; encoder {m.encoder_layers}x{m.encoder_width}, "
            f"{router}, experts {m.expert_layers}x{m.expert_width}")


def cmd_decompress(args) -> int:
    from . import pack
    from .decode import reconstruct
    from .errors import MoecError
    from .train import resolve_device
    from .volume import save_labels, save_nifti, save_volume

    source = Path(args.input)
    output = Path(args.output) if args.output else None
    if output is None and not args.dicom:
        raise MoecError("decompress needs -o OUT.nii.gz, --dicom OUTDIR, or both")
    if output is not None:
        _check_volume_output(output, args.force, source)
    for extra in (args.labels, args.confidence):
        if extra:
            _check_volume_output(extra, args.force, source, npy=False)
    _check_distinct(output, args.labels, args.confidence, args.dicom)
    if args.dicom:
        from .dicom import check_series_output

        check_series_output(args.dicom, args.force)
    # auto decodes on the CPU, as compress measured the file; a missing CUDA device is reported first.
    device = "cpu" if args.device == "auto" else resolve_device(args.device)
    moec = pack.read(source)
    if args.dicom and moec.meta.dicom is None:
        raise MoecError(f"{source} was not compressed from a DICOM series, so it holds no patient and study to file "
                        "a series under; write it as NIfTI with -o")
    shape = _output_grid(moec.meta.shape, args.scale, args.shape)
    recon = reconstruct(moec, device=device, shape=shape)
    tag = f"MoEC lossy {moec.ratio:.0f}x"
    if shape is not None:
        from .resample import resampled_descrip

        tag = resampled_descrip(tag, shape)
    if output is not None:
        save_volume(recon.volume, output, descrip=tag)
        spacing = " x ".join(f"{z:g}" for z in recon.volume.spacing[:3])
        print(f"wrote {output} ({' x '.join(map(str, recon.volume.shape))} {moec.meta.dtype.name}, {spacing} mm, "
              f"{tag})")
    if args.dicom and moec.meta.dicom is not None:  # checked above: a file from DICOM
        from .dicom import digest, write_series

        files = write_series(recon.volume, moec.meta.dicom, args.dicom, moec.ratio, digest(source.read_bytes()),
                             force=args.force)
        print(f"wrote {args.dicom} ({len(files)} DICOM slices: a derived {moec.meta.dicom.modality} series marked "
              f"lossy, {tag}, under the original's patient and study)")
    if args.labels:
        save_labels(recon.volume, recon.labels, args.labels, f"MoEC experts (label k+1 = expert k), {tag}")
        print(f"wrote {args.labels} (expert assignment, labels 1..{moec.meta.model.experts})")
    if args.confidence:
        save_nifti(recon.volume, recon.confidence.astype("float32"), args.confidence, f"MoEC gate confidence, {tag}")
        print(f"wrote {args.confidence} (gate confidence, 0..1)")
    return 0


def _output_grid(shape: tuple[int, ...], scale: list[float] | None, size: list[int] | None) -> tuple[int, ...] | None:
    """The grid --scale or --shape asks for (None: the file's own). Scale factors apply to the
    spatial axes; a 4D file keeps its time points."""
    from .resample import check_shape, spatially_scaled

    rest = tuple(shape[3:])
    if scale is not None:
        grid = spatially_scaled(shape, scale[0] if len(scale) == 1 else tuple(scale))
    elif size is not None:
        grid = check_shape(tuple(size) + (rest if len(size) == 3 else ()), len(shape))
    else:
        return None
    return None if grid == tuple(shape) else grid


def cmd_info(args) -> int:
    from . import pack
    from .bitstream import unpack_container
    from .volume import nifti_header

    source = Path(args.input)
    if source.is_dir() and not source.name.lower().endswith(".moec"):
        return _list_series(source, args.json)
    moec = pack.read(source)
    data = source.read_bytes()  # once, for the two byte-level summaries below
    meta = moec.meta
    m = meta.model
    if args.json:
        print(_json({"bytes": moec.nbytes, "ratio": moec.ratio, **meta.to_json()}))
        return 0
    spacing = nifti_header(meta.nifti).get_zooms()[: len(meta.shape)]
    params = m.parameter_count()
    t = meta.train
    q = meta.quant
    weights = "float16" if q.float16 else (
        f"{q.bits}-bit" + (f" (+{q.first_layer_extra_bits} on the first layer)" if m.coordinate_layer else "")
        + f", per-{q.granularity} steps, range-coded" + (_latent_coding(data) if m.encoder == "grid" else ""))
    stages = t.get("stages", [0, 0, 0])
    budget = f"{t['minutes']:g} min budget" if t.get("minutes") else "step budget"
    # Where the bytes go matters at extreme ratios, where the header is a visible share of the file.
    weight_bytes = len(unpack_container(data).payload)
    print(f"file      {source} ({_bytes(moec.nbytes)}: weights {weight_bytes:,}, header and container "
          f"{moec.nbytes - weight_bytes:,}; format version {meta.version})")
    print(f"volume    {' x '.join(map(str, meta.shape))} {meta.dtype.name}, spacing "
          f"{' x '.join(f'{s:g}' for s in spacing)}, values {meta.vmin:g} .. {meta.vmax:g}"
          + (f" (stored with slope {meta.slope:g}, intercept {meta.inter:g})"
             if (meta.slope, meta.inter) != (1, 0) else ""))
    print(f"ratio     {moec.ratio:.1f}x vs raw voxels ({_bytes(meta.raw_bytes)})")
    print(f"model     {_describe_model(m)}; {params:,} parameters")
    print(f"weights   {weights}; {8 * moec.nbytes / params:.2f} bits per parameter (whole file)")
    if meta.floor is not None:
        print(f"floor     decoded values at or below {meta.floor:g} become {meta.vmin:g} (the background's noise)")
    print(f"made      seed {t.get('seed')}, {t.get('steps')} steps (router {stages[0]}, joint {stages[1]}, "
          f"final {stages[2]}) in {t.get('runs')} run(s), {budget}, batch {t.get('batch')}, lr {t.get('lr')}, "
          f"balance {t.get('balance')}")
    if t.get("roi"):
        print(f"roi       trained with a region of interest of {t['roi']['voxels']:,} voxels weighted "
              f"{t['roi']['weight']:g}x (moec eval --roi MASK measures inside and outside it)")
    print("software  " + ", ".join(f"{k} {v}" for k, v in sorted(meta.made_by.items())))
    if meta.dicom is not None:
        d = meta.dicom
        print(f"dicom     {d.modality} series {d.series_number or '-'}"
              + (f' "{d.series_description}"' if d.series_description else "")
              + f" ({d.series_uid}) of study {d.study_uid}, patient {d.patient_id or '-'}"
              "; moec decompress --dicom writes it back as a derived series")
    return 0


def _list_series(folder: Path, as_json: bool) -> int:
    """`moec info FOLDER`: the DICOM series of a folder, one line each (what --series chooses from)."""
    from .dicom import choose_series, scan_folder

    scan = scan_folder(folder)
    if not scan.series:
        choose_series(folder)  # raises the reason, in words
    if as_json:
        print(_json([{"uid": s.uid, "modality": s.modality, "number": s.number, "description": s.description,
                      "shape": [s.columns, s.rows, len(s.files)]} for s in scan.series]))
        return 0
    print(f"{folder}: {len(scan.series)} DICOM series (columns x rows x slices)")
    for info in scan.series:
        print(f"  {info.describe()}")
    for path, why in scan.unreadable:
        print(f"  unreadable: {path.name}: {why}")
    return 0


def _latent_coding(data: bytes) -> str:
    from . import entropy, pack
    from .model import is_latent

    grids = [model for name, model in pack.stored_models(data).items() if is_latent(name)]
    with_context = sum(model.family == entropy.CONTEXT for model in grids)
    return f"; latents at rate-set steps, {with_context} of {len(grids)} grids through the spatial context model"


def cmd_eval(args) -> int:
    from . import pack, pipeline
    from .volume import load_volume

    original = load_volume(args.original, args.series)
    moec = pack.read(args.input)
    roi = None
    if args.roi:
        from .roi import load_roi

        roi = load_roi(args.roi, original.shape, original.affine)
    evaluation = pipeline.evaluate(original, moec, roi=roi)
    q = evaluation.quality
    trained = moec.meta.train.get("roi")
    if args.json:
        print(_json({"ratio": evaluation.ratio, "file_ratio": evaluation.file_ratio, "quality": asdict(q),
                     "roi": asdict(evaluation.roi) if evaluation.roi is not None else None, "trained_roi": trained,
                     "experts": [asdict(e) for e in evaluation.experts]}))
        return 0
    print(f"ratio             {evaluation.ratio:.1f}x vs raw voxels"
          + (f", {evaluation.file_ratio:.1f}x vs {Path(args.original).name}" if evaluation.file_ratio else ""))
    print(f"PSNR              {_db(q.psnr)} (peak = max - min = {q.peak:g})")
    if q.psnr_dtype_peak is not None:
        print(f"PSNR, dtype peak  {_db(q.psnr_dtype_peak)} (peak = {original.dtype.name} maximum, as SCI/TINC report; "
              "not comparable with the line above)")
    print(f"SSIM              {q.ssim:.4f} ({q.ssim_method})")
    print(f"max error         {q.max_error:g} (real units)")
    print(f"99th pct error    {q.p99_error:g}")
    print(f"PSNR inside body  {_db(q.psnr_body)} ({100 * q.body_share:.1f}% of voxels)")
    print(f"worst slice       k = {q.worst_slice} (third axis), {_db(q.worst_slice_psnr)}")
    if evaluation.roi is not None:
        print(f"ROI               {_region_text(evaluation.roi)}")
    if trained:
        print(f"trained with ROI  {trained['voxels']:,} voxels weighted {trained['weight']:g}x"
              + ("" if roi is not None else " (give --roi MASK to measure inside and outside it)"))
    print()
    print("expert  label  voxels   PSNR in region  parameters")
    for e in evaluation.experts:
        print(f"{e.expert:>6}  {e.expert + 1:>5}  {100 * e.share:5.1f}%  {_db(e.psnr):>14}  {e.parameters:>10,}")
    return 0


def _region_text(r) -> str:
    return (f"inside {_db(r.psnr_inside)}, max error {r.max_inside:g} ({r.voxels:,} voxels, {100 * r.share:.2f}%); "
            f"outside {_db(r.psnr_outside)}, max error {r.max_outside:g}")


CODEC_KEYS = {"j2k": "JPEG 2000", "hevc": "HEVC (x265)", "h264": "H.264 (x264)"}


def cmd_bench(args) -> int:
    import torch

    from . import bench
    from .train import TrainConfig
    from .volume import load_volume

    if args.threads:
        torch.set_num_threads(args.threads)
    volume = load_volume(args.input, args.series)
    for line in bench.describe_missing():
        print(f"note: {line}", file=sys.stderr)
    config = TrainConfig(minutes=args.minutes, steps=args.steps, seed=args.seed)
    out = Path(args.out)
    codecs = tuple(CODEC_KEYS[c] for c in args.codecs)
    results = bench.run(volume, out, tuple(args.ratios), config, codecs=codecs, ablations=args.ablations,
                        ablation_ratio=args.ablation_ratio, moec=not args.classical_only, seeds=args.seeds,
                        log=lambda text: print(text, file=sys.stderr, flush=True))
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}"
          + (f", {out / 'rd.png'}" if "plot" not in results else f" ({results['plot']})"))
    return 0


def cmd_batch(args) -> int:
    from . import batch, cohort_report

    settings = batch.BatchSettings(ratio=args.ratio, minutes=args.minutes, steps=args.steps, experts=args.experts,
                                   seed=args.seed, batch_size=args.batch, device=args.device)
    engine = batch.Engine(scheduler=args.scheduler, workers=args.workers, threads=args.threads)
    if args.report:
        cohort_report.check_available()
        report = Path(args.report)
        if report.exists() and not report.is_dir():
            from .errors import OutputError
            raise OutputError(f"{report} is a file, not a folder for the report")
    output = Path(args.output)
    try:
        summary = batch.run(Path(args.input), output, settings, engine, force=args.force, progress=not args.quiet,
                            log=lambda text: print(text, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print(f"moec: interrupted; every volume that finished is in {output / batch.MANIFEST}: run the same "
              "command again to go on", file=sys.stderr)
        return 130
    if args.json:
        print(_json([asdict(r) for r in summary.rows]))
    else:
        print(cohort_report.table(summary.rows))
        print()
        minutes = summary.seconds / 60
        rate = f", {summary.compressed / (summary.seconds / 3600):.1f} volumes per hour" if summary.compressed else ""
        before = f"; {summary.skipped} finished before" if summary.skipped else ""
        print(f"{summary.compressed} compressed in {minutes:.1f} min on {summary.engine}{rate}{before}; "
              f"{summary.failed} failed")
        print(f"manifest: {output / batch.MANIFEST}")
    if args.report:
        md, png = cohort_report.write_report(summary.rows, args.report,
                                             f"{Path(args.input).resolve().name}: {settings.key}")
        print(f"report: {md}, {png}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_ERROR if summary.failed else 0


def cmd_sample(args) -> int:
    from .phantom import make_phantom
    from .volume import save_labels, save_volume

    output = Path(args.output)
    _check_volume_output(output, args.force)
    if args.labels:
        _check_volume_output(args.labels, args.force, npy=False)
        _check_distinct(output, args.labels)
    volume, labels = make_phantom(tuple(args.shape))
    save_volume(volume, output, descrip="MoEC sample phantom (synthetic CT, HU)")
    print(f"wrote {output} ({' x '.join(map(str, volume.shape))} int16, HU)")
    if args.labels:
        save_labels(volume, labels, args.labels, "MoEC phantom tissue labels")
        print(f"wrote {args.labels} (tissue labels)")
    return 0


# --- argument parsing ------------------------------------------------------------------------------

def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} must be positive")
        return value
    return parse


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return value


def _series_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--series", metavar="UID",
                        help="the SeriesInstanceUID to read where a DICOM folder holds several (moec info FOLDER "
                             "lists them)")


def _volume_options(parser: argparse.ArgumentParser, file_, train, each: str) -> None:
    """--ratio, --minutes | --steps and --experts: what `compress` and `batch` ask of every file."""
    parser.add_argument("--ratio", type=_positive(float), default=file_.ratio,
                        help=f"compression ratio vs the raw voxels; the file lands in [R, 1.05 R] "
                             f"(default {file_.ratio:g})")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=_positive(float), default=train.minutes,
                        help=f"training time {each} (default {train.minutes:g})")
    budget.add_argument("--steps", type=_positive(int), help=f"training steps {each} instead (reproducible)")
    parser.add_argument("--experts", type=_positive(int), default=file_.experts,
                        help=f"number of experts (default {file_.experts}; 1 = one SIREN)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from . import settings as choices

    # Every default and choice list comes from codec.settings: changing one there changes it here.
    file_, train = choices.Settings(), choices.TrainConfig()

    parser = argparse.ArgumentParser(prog="moec", description="Compress 3D/4D medical volumes with a "
                                     "mixture-of-experts neural representation (MoEC).")
    parser.add_argument("--version", action="version", version=f"moec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compress", help="NIfTI/NumPy volume or DICOM series -> .moec file")
    c.add_argument("input", help=".nii, .nii.gz or .npy volume (3D or 4D), or a DICOM series' folder")
    _series_option(c)
    c.add_argument("-o", "--output", help="the .moec file to write (default: beside the input)")
    _volume_options(c, file_, train, "per file")
    c.add_argument("--top-k", type=int, choices=choices.TOP_K, default=file_.top_k,
                   help=f"experts per voxel (default {file_.top_k})")
    c.add_argument("--partition", choices=choices.PARTITIONS, default=file_.partition,
                   help=f"learned router or the fixed block split baseline (default {file_.partition})")
    c.add_argument("--encoder", choices=choices.ENCODERS, default=file_.encoder,
                   help="shared encoder: a latent grid or a SIREN layer; auto: the grid for 3D volumes with a "
                        f"learned router, 2+ experts and quantized weights, else SIREN (default {file_.encoder})")
    c.add_argument("--router-input", choices=choices.ROUTER_INPUTS,
                   default="features" if file_.router_features else "coordinates",
                   help="what the router reads: the coordinates and the encoder features (DESIGN's router), or "
                        "the coordinates alone (an ablation: docs/benchmarks.md) (default "
                        f"{'features' if file_.router_features else 'coordinates'})")
    c.add_argument("--grid-channels", type=_positive(int), default=file_.grid_channels, metavar="C",
                   help=f"latents per grid node and level, for the latent grid (default {file_.grid_channels}; "
                        "fewer channels buy a finer grid in the same bytes)")
    c.add_argument("--grid-spacing", type=_unit_interval, default=file_.grid_spacing_power, metavar="P",
                   help="how the latent grid follows the voxel size on thick slices (voxels 2.5 times longer on "
                        "one axis than on another): nodes per axis in proportion to voxels x (voxel size / "
                        f"largest)^P; 0 the voxels' proportions, 1 equal millimetres (default "
                        f"{file_.grid_spacing_power:g})")
    c.add_argument("--bits", type=int, default=file_.bits,
                   help=f"weight bit width before entropy coding; 16 = float16 (default {file_.bits})")
    c.add_argument("--granularity", choices=choices.GRANULARITIES, default=file_.granularity,
                   help=f"one step per tensor or per output channel (default {file_.granularity})")
    c.add_argument("--seed", type=int, default=train.seed)
    c.add_argument("--device", choices=choices.DEVICES, default=train.device)
    c.add_argument("--threads", type=_positive(int), help="torch CPU threads (default: torch's choice)")
    c.add_argument("--lr", type=_positive(float), default=train.lr, help=f"learning rate (default {train.lr:g})")
    c.add_argument("--batch", type=_positive(int), default=train.batch_size,
                   help=f"coordinates per step (default {train.batch_size})")
    c.add_argument("--balance", type=float, default=train.balance_weight,
                   help=f"balancing loss weight (default {train.balance_weight:g})")
    c.add_argument("--roi", metavar="MASK",
                   help="a NIfTI mask on the volume's grid (non-zero = region of interest, e.g. a lesion): its "
                        "squared error counts --roi-weight times more in training, so it comes out sharper")
    c.add_argument("--roi-weight", type=float, default=train.roi_weight, metavar="W",
                   help=f"how much more an ROI voxel's squared error counts (default {train.roi_weight:g})")
    pretrain = train.pretrain_target if train.router_pretraining else "none"
    c.add_argument("--pretrain", choices=(*choices.PRETRAIN_TARGETS, "none"), default=pretrain,
                   help=f"the router's starting partition: intensity clusters, blocks, or none (an ablation) "
                        f"(default {pretrain})")
    c.add_argument("--force", action="store_true", help="replace an existing output file")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(run=cmd_compress)

    d = sub.add_parser("decompress", help=".moec file -> NIfTI volume or DICOM series")
    d.add_argument("input")
    d.add_argument("-o", "--output", help=".nii, .nii.gz or .npy to write")
    d.add_argument("--dicom", metavar="OUTDIR",
                   help="write the reconstruction as a DICOM series in this folder (a derived series, marked "
                        "lossy, under the original's patient and study; for files compressed from DICOM)")
    d.add_argument("--labels", help="also write the expert assignment (uint8, expert k as k+1) as NIfTI")
    d.add_argument("--confidence", help="also write the gate confidence (float32) as NIfTI")
    grid = d.add_mutually_exclusive_group()
    grid.add_argument("--scale", type=float, nargs="+", metavar="S",
                      help="decode on another grid over the same box: voxels per axis times S (one factor, or one "
                           "per spatial axis: --scale 1 1 5 gives 1 mm slices from a 5 mm CT); the affine follows")
    grid.add_argument("--shape", type=int, nargs="+", metavar="N", help="decode on a grid of these voxels per axis")
    d.add_argument("--device", choices=choices.DEVICES, default="cpu")
    d.add_argument("--force", action="store_true", help="replace existing output files")
    d.set_defaults(run=cmd_decompress)

    i = sub.add_parser("info", help="describe a .moec file, or list the DICOM series of a folder")
    i.add_argument("input")
    i.add_argument("--json", action="store_true")
    i.set_defaults(run=cmd_info)

    e = sub.add_parser("eval", help="measure a .moec file against the original volume")
    e.add_argument("original", help="the original: a NIfTI/NumPy file or a DICOM series' folder")
    e.add_argument("input")
    _series_option(e)
    e.add_argument("--roi", metavar="MASK", help="also measure inside and outside this NIfTI mask (non-zero = inside)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(run=cmd_eval)

    b = sub.add_parser("bench", help="rate-distortion of MoEC against JPEG 2000, HEVC and H.264 on a volume")
    b.add_argument("input", help=".nii, .nii.gz or .npy volume, or a DICOM series' folder")
    _series_option(b)
    b.add_argument("--ratios", type=_positive(float), nargs="+", default=[128.0, 256.0, 512.0, 1024.0, 4096.0])
    bench_budget = b.add_mutually_exclusive_group()
    bench_budget.add_argument("--minutes", type=_positive(float), default=train.minutes,
                              help=f"MoEC training time per cell (default {train.minutes:g})")
    bench_budget.add_argument("--steps", type=_positive(int), help="MoEC training steps per cell instead")
    b.add_argument("--codecs", nargs="*", choices=sorted(CODEC_KEYS), default=sorted(CODEC_KEYS),
                   help="classical codecs to run (default: all that are installed)")
    b.add_argument("--ablations", action="store_true",
                   help="also the ablations (experts, top-2, balancing, pretraining) at --ablation-ratio")
    b.add_argument("--ablation-ratio", type=_positive(float), default=256.0)
    b.add_argument("--classical-only", action="store_true", help="skip the MoEC cells")
    b.add_argument("--out", default="moec-bench", help="folder for cells, results.json, results.md, rd.png")
    b.add_argument("--seed", type=int, default=0, help="the (first) training seed of every MoEC cell")
    b.add_argument("--seeds", type=_positive(int), default=1,
                   help="seeds per cell of the rows the verdict reads (the claim's three and the control) and of "
                        "the ablations, from --seed up; the tables show their mean, the verdict whether the order "
                        "holds on every seed")
    b.add_argument("--threads", type=_positive(int))
    b.set_defaults(run=cmd_bench)

    a = sub.add_parser("batch", help="every volume of a folder (NIfTI files, DICOM series) -> .moec files, on dask",
                       description="Compress every NIfTI file and DICOM series under INPUT_DIR into OUT_DIR, "
                                   "mirroring the folder tree, on a local dask cluster or an existing one. "
                                   "OUT_DIR/manifest.csv records each volume as it finishes; run the same command "
                                   "again to skip finished volumes and retry the others.")
    a.add_argument("input", metavar="INPUT_DIR")
    a.add_argument("-o", "--output", metavar="OUT_DIR", required=True,
                   help="folder for the .moec files and the manifest")
    _volume_options(a, file_, train, "per volume")
    a.add_argument("--seed", type=int, default=train.seed)
    a.add_argument("--batch", type=_positive(int), default=train.batch_size,
                   help=f"coordinates per step (default {train.batch_size})")
    a.add_argument("--device", choices=choices.DEVICES, default=train.device,
                   help=f"where each task trains (auto: a worker's GPU when it has one; default {train.device})")
    a.add_argument("--scheduler", metavar="ADDRESS",
                   help="a running dask scheduler (tcp://host:8786) to send the volumes to; the workers must see "
                        "INPUT_DIR and OUT_DIR at the same paths (default: a local cluster on this machine)")
    a.add_argument("--workers", type=_positive(int),
                   help="local worker processes (default: one per core, as far as volumes and memory allow)")
    a.add_argument("--threads", type=_positive(int),
                   help="torch threads per volume (default: the cores shared out among the workers)")
    a.add_argument("--report", metavar="DIR", help="also write DIR/report.md and DIR/cohort.png (needs matplotlib)")
    a.add_argument("--force", action="store_true",
                   help="compress again volumes that were finished with other settings")
    a.add_argument("--quiet", action="store_true", help="no progress bar or per-volume lines")
    a.add_argument("--json", action="store_true", help="print the manifest's rows as JSON instead of the table")
    a.set_defaults(run=cmd_batch)

    s = sub.add_parser("sample", help="write the sample phantom (synthetic CT) as NIfTI")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--labels", help="also write its tissue labels")
    s.add_argument("--shape", type=_positive(int), nargs=3, default=(96, 80, 48), metavar=("X", "Y", "Z"))
    s.add_argument("--force", action="store_true")
    s.set_defaults(run=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import MoecError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()  # so that a reader gone away shows here, not as a warning at exit
        return code
    except BrokenPipeError:
        # The reader of the output left (`moec eval ... | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except MoecError as exc:
        for info in getattr(exc, "series", ()):  # a folder of several series: the choices, one a line
            print(f"  {info.describe()}", file=sys.stderr)
        print(f"moec: error: {exc}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        if os.environ.get("MOEC_DEBUG"):
            raise
        print(f"moec: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("moec: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("moec: error: out of memory", file=sys.stderr)
    except Exception as exc:  # the promise is one line, never a traceback
        if os.environ.get("MOEC_DEBUG"):
            raise
        print(f"moec: error: unexpected {type(exc).__name__}: {exc} (MOEC_DEBUG=1 shows the traceback)",
              file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
