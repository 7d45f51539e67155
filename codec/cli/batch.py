"""`moec batch`: every volume under a folder, on a dask cluster, resumable, with a cohort report."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from codec.cli.console import EXIT_ERROR, memory_limit, to_json
from codec.io.files import terminal_safe


def cmd_batch(args) -> int:
    from codec.cohort import batch
    from codec.cohort import report as cohort_report

    settings = batch.BatchSettings(ratio=args.ratio, minutes=args.minutes, steps=args.steps, experts=args.experts,
                                   seed=args.seed, batch_size=args.batch, device=args.device,
                                   keep_identity=bool(getattr(args, "keep_identity", False)))
    # Without --max-memory each task takes the default share of the machine it runs on (a worker
    # of a remote cluster has its own), not of this one.
    memory = memory_limit(args) if getattr(args, "max_memory", None) is not None else None
    engine = batch.Engine(scheduler=args.scheduler, workers=args.workers, threads=args.threads, memory=memory)
    if args.report:
        cohort_report.check_available()
        report = Path(args.report)
        if report.exists() and not report.is_dir():
            from codec.errors import OutputError
            raise OutputError(f"{report} is a file, not a folder for the report")
    output = Path(args.output)
    try:
        # Every line names volumes and errors that come from the files: no escape sequence reaches the terminal.
        summary = batch.run(Path(args.input), output, settings, engine, force=args.force, progress=not args.quiet,
                            log=lambda text: print(terminal_safe(text), file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print(f"moec: interrupted; every volume that finished is in {output / batch.MANIFEST}: run the same "
              "command again to go on", file=sys.stderr)
        return 130
    if args.json:
        print(to_json([asdict(r) for r in summary.rows]))
    else:
        print(cohort_report.table(summary.rows))  # escaped cell by cell, so that its columns line up
        print()
        minutes = summary.seconds / 60
        rate = f", {summary.compressed / (summary.seconds / 3600):.1f} volumes per hour" if summary.compressed else ""
        before = f"; {summary.skipped} finished before" if summary.skipped else ""
        print(f"{summary.compressed} compressed in {minutes:.1f} min on {terminal_safe(summary.engine)}{rate}{before}; "
              f"{summary.failed} failed")
        print(f"manifest: {output / batch.MANIFEST}")
    if args.report:
        md, png = cohort_report.write_report(summary.rows, args.report,
                                             f"{Path(args.input).resolve().name}: {settings.key}")
        print(f"report: {md}, {png}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_ERROR if summary.failed else 0
