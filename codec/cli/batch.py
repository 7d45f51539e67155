"""`moec batch`: every volume under a folder, on a dask cluster, resumable, with a cohort report."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from codec.cli.console import EXIT_ERROR, to_json


def cmd_batch(args) -> int:
    from codec.cohort import batch
    from codec.cohort import report as cohort_report

    settings = batch.BatchSettings(ratio=args.ratio, minutes=args.minutes, steps=args.steps, experts=args.experts,
                                   seed=args.seed, batch_size=args.batch, device=args.device)
    engine = batch.Engine(scheduler=args.scheduler, workers=args.workers, threads=args.threads)
    if args.report:
        cohort_report.check_available()
        report = Path(args.report)
        if report.exists() and not report.is_dir():
            from codec.errors import OutputError
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
        print(to_json([asdict(r) for r in summary.rows]))
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
