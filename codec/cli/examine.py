"""`moec info`, `moec eval` and `moec sample`: a file described, a file measured, the sample written."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from codec.cli.console import (
    check_distinct,
    check_volume_output,
    describe_model,
    memory_limit,
    nbytes,
    region_text,
    to_json,
)
from codec.eval import db_text


def cmd_info(args: argparse.Namespace) -> int:
    from codec.decode import cost
    from codec.format import moecfile
    from codec.format.container import unpack_container
    from codec.io.volume import nifti_header

    source = Path(args.input)
    if source.is_dir() and not source.name.lower().endswith(".moec"):
        return _list_series(source, args.json)
    moec = moecfile.read(source)
    data = source.read_bytes()  # once, for the two byte-level summaries below
    meta = moec.meta
    m = meta.model
    # What `moec decompress -o` of the file's own grid would hold and take, and whether it would refuse.
    estimate = cost.decode_cost(meta, values=meta.dtype, labels=False, confidence=False)
    refusal = _refusal(estimate, args, source)
    if args.json:
        print(
            to_json(
                {
                    "bytes": moec.nbytes,
                    "ratio": moec.ratio,
                    **meta.to_json(),
                    "decode": {**estimate.to_json(), "within_limits": refusal is None},
                }
            )
        )
        return 0
    spacing = nifti_header(meta.nifti).get_zooms()[: len(meta.shape)]
    params = m.parameter_count()
    t = meta.train
    q = meta.quant
    weights = (
        "float16"
        if q.float16
        else (
            f"{q.bits}-bit"
            + (f" (+{q.first_layer_extra_bits} on the first layer)" if m.coordinate_layer else "")
            + f", per-{q.granularity} steps, range-coded"
            + (_latent_coding(data) if m.encoder == "grid" else "")
        )
    )
    stages = t.get("stages", [0, 0, 0])
    budget = f"{t['minutes']:g} min budget" if t.get("minutes") else "step budget"
    # Where the bytes go matters at extreme ratios, where the header is a visible share of the file.
    weight_bytes = len(unpack_container(data).payload)
    print(
        f"file      {source} ({nbytes(moec.nbytes)}: weights {weight_bytes:,}, header and container "
        f"{moec.nbytes - weight_bytes:,}; format version {meta.version})"
    )
    print(
        f"volume    {' x '.join(map(str, meta.shape))} {meta.dtype.name}, spacing "
        f"{' x '.join(f'{s:g}' for s in spacing)}, values {meta.vmin:g} .. {meta.vmax:g}"
        + (
            f" (stored with slope {meta.slope:g}, intercept {meta.inter:g})"
            if (meta.slope, meta.inter) != (1, 0)
            else ""
        )
    )
    print(f"ratio     {moec.ratio:.1f}x vs raw voxels ({nbytes(meta.raw_bytes)})")
    print(f"model     {describe_model(m)}; {params:,} parameters")
    print(f"decode    {estimate.text()}" + ("" if refusal is None else f"; refused as it stands: {refusal}"))
    print(f"weights   {weights}; {8 * moec.nbytes / params:.2f} bits per parameter (whole file)")
    if meta.floor is not None:
        print(f"floor     decoded values at or below {meta.floor:g} become {meta.vmin:g} (the background's noise)")
    print(
        f"made      seed {t.get('seed')}, {t.get('steps')} steps (router {stages[0]}, joint {stages[1]}, "
        f"final {stages[2]}) in {t.get('runs')} run(s), {budget}, batch {t.get('batch')}, lr {t.get('lr')}, "
        f"balance {t.get('balance')}"
        # Files from before the sampler was recorded drew every voxel alike.
        + (
            f", {t['sample_activity']:.0%} of each batch drawn by activity"
            if t.get("sample_activity") is not None
            else ""
        )
    )
    if t.get("roi"):
        print(
            f"roi       trained with a region of interest of {t['roi']['voxels']:,} voxels weighted "
            f"{t['roi']['weight']:g}x (moec eval --roi MASK measures inside and outside it)"
        )
    print("software  " + ", ".join(f"{k} {v}" for k, v in sorted(meta.made_by.items())))
    if meta.dicom is not None:
        d = meta.dicom
        series = f"{d.modality} series {d.series_number or '-'}" + (
            f' "{d.series_description}"' if d.series_description else ""
        )
        if d.keeps_identity:
            print(
                f"dicom     {series} ({d.series_uid or 'no series UID'}) of study {d.study_uid or '-'}, "
                f"patient {d.patient_id or '-'}: the file holds the patient's identity (made with "
                "--keep-identity); moec decompress --dicom files it back under them"
            )
        else:
            print(
                f"dicom     {series}: no patient or study in the file (de-identified); moec decompress "
                "--dicom files it under a new pseudonymous patient and study"
            )
    return 0


def _refusal(estimate: Any, args: argparse.Namespace, source: Path) -> str | None:
    """Why `moec decompress` under these limits would refuse the decode `estimate` (None: it would not)."""
    from codec.decode import cost
    from codec.errors import ResourceLimitError

    try:
        cost.check(
            estimate,
            memory_limit(args),
            cost.max_seconds(getattr(args, "max_decode_minutes", None)),
            what=f"decoding {source.name}",
        )
    except ResourceLimitError as exc:
        return str(exc)
    return None


def _list_series(folder: Path, as_json: bool) -> int:
    """`moec info FOLDER`: the DICOM series of a folder, one line each (what --series chooses from)."""
    from codec.io.dicom import choose_series, scan_folder

    scan = scan_folder(folder)
    if not scan.series:
        choose_series(folder)  # raises the reason, in words
    if as_json:
        print(
            to_json(
                [
                    {
                        "uid": s.uid,
                        "modality": s.modality,
                        "number": s.number,
                        "description": s.description,
                        "shape": [s.columns, s.rows, len(s.files)],
                    }
                    for s in scan.series
                ]
            )
        )
        return 0
    print(f"{folder}: {len(scan.series)} DICOM series (columns x rows x slices)")
    for info in scan.series:
        print(f"  {info.describe()}")
    for path, why in scan.unreadable:
        print(f"  unreadable: {path.name}: {why}")
    return 0


def _latent_coding(data: bytes) -> str:
    from codec.coding import entropy
    from codec.format.payload import stored_models
    from codec.model import is_latent

    grids = [model for name, model in stored_models(data).items() if is_latent(name)]
    with_context = sum(model.family == entropy.CONTEXT for model in grids)
    return f"; latents at rate-set steps, {with_context} of {len(grids)} grids through the spatial context model"


def cmd_eval(args: argparse.Namespace) -> int:
    from codec import pipeline
    from codec.decode import cost
    from codec.format import moecfile
    from codec.format.header import MoecMeta
    from codec.io.load import load_volume

    limit = memory_limit(args)
    source = Path(args.input)

    def admit(meta: MoecMeta) -> None:
        # pipeline.evaluate decodes values, labels and confidence in real units beside the original
        # (loaded in float32, checked by load_volume itself) and the metrics' temporaries.
        estimate = cost.decode_cost(meta, beside=EVAL_BYTES_PER_VOXEL)
        cost.check(
            estimate,
            limit,
            cost.max_seconds(args.max_decode_minutes),
            what=f"decoding and measuring {source.name} ({cost.grid_text(estimate.shape)} voxels)",
        )

    # The file's header first: a file that cannot be measured is refused before the original is read.
    moec = moecfile.read(source, admit=admit)
    original = load_volume(args.original, args.series, limit=limit)
    roi = None
    if args.roi:
        from codec.io.roi import load_roi

        roi = load_roi(args.roi, original.shape, original.affine)
    evaluation = pipeline.evaluate(original, moec, roi=roi)
    q = evaluation.quality
    trained = moec.meta.train.get("roi")
    if args.json:
        print(
            to_json(
                {
                    "ratio": evaluation.ratio,
                    "file_ratio": evaluation.file_ratio,
                    "quality": asdict(q),
                    "roi": asdict(evaluation.roi) if evaluation.roi is not None else None,
                    "trained_roi": trained,
                    "experts": [asdict(e) for e in evaluation.experts],
                }
            )
        )
        return 0
    print(
        f"ratio             {evaluation.ratio:.1f}x vs raw voxels"
        + (f", {evaluation.file_ratio:.1f}x vs {Path(args.original).name}" if evaluation.file_ratio else "")
    )
    print(f"PSNR              {db_text(q.psnr)} (peak = max - min = {q.peak:g})")
    if q.psnr_dtype_peak is not None:
        print(
            f"PSNR, dtype peak  {db_text(q.psnr_dtype_peak)} (peak = {original.stored_dtype.name} maximum, "
            "as SCI/TINC report; not comparable with the line above)"
        )
    print(f"SSIM              {q.ssim:.4f} ({q.ssim_method})")
    print(f"max error         {q.max_error:g} (real units)")
    print(f"99th pct error    {q.p99_error:g}")
    print(f"PSNR inside body  {db_text(q.psnr_body)} ({100 * q.body_share:.1f}% of voxels)")
    print(f"worst slice       k = {q.worst_slice} (third axis), {db_text(q.worst_slice_psnr)}")
    if evaluation.roi is not None:
        print(f"ROI               {region_text(evaluation.roi)}")
    if trained:
        print(
            f"trained with ROI  {trained['voxels']:,} voxels weighted {trained['weight']:g}x"
            + ("" if roi is not None else " (give --roi MASK to measure inside and outside it)")
        )
    print()
    print("expert  label  voxels   PSNR in region  parameters    latents   bytes")
    for e in evaluation.experts:
        print(
            f"{e.expert:>6}  {e.expert + 1:>5}  {100 * e.share:5.1f}%  {db_text(e.psnr):>14}  {e.parameters:>10,}"
            f"  {e.latents:>9,}  {e.coded_bytes:>6,.0f}"
        )
    print(
        "(bytes: the expert's network and the latents whose grid node lies in its region, at their code "
        "lengths in the file; the router, decoder and tables are shared)"
    )
    return 0


#: What measuring holds per voxel beside the decode: the original in float32 and the metrics'
#: float64 differences and masks (codec.eval.metrics).
EVAL_BYTES_PER_VOXEL = 24


def cmd_sample(args: argparse.Namespace) -> int:
    from codec.io.load import save_volume
    from codec.io.nifti import save_labels
    from codec.io.phantom import make_phantom

    output = Path(args.output)
    check_volume_output(output, args.force)
    if args.labels:
        check_volume_output(args.labels, args.force, npy=False)
        check_distinct(output, args.labels)
    volume, labels = make_phantom(tuple(args.shape))
    save_volume(volume, output, descrip="MoEC sample phantom (synthetic CT, HU)")
    print(f"wrote {output} ({' x '.join(map(str, volume.shape))} int16, HU)")
    if args.labels:
        save_labels(volume, labels, args.labels, "MoEC phantom tissue labels")
        print(f"wrote {args.labels} (tissue labels)")
    return 0
