"""`moec compress | decompress | info | eval | bench | batch | sample`: the codec on the command line.

Errors are one readable line on stderr and a non-zero exit status, never a traceback (set
MOEC_DEBUG=1 to see one). Outputs are written atomically and never over the command's own input;
an existing output is kept unless --force is given.
"""

from __future__ import annotations

# OpenMP's wait policy is left to the user (OMP_WAIT_POLICY=PASSIVE before the run): on an idle
# machine the default, spinning threads, trains faster than PASSIVE (docs/benchmarks.md, "Speed and
# memory (`benchmarks/speed.py`, 2 CPU threads)"); PASSIVE pays off only when another busy process
# shares the cores, as the napari viewer does (moec_napari sets it).
import argparse
import os
import signal
import sys
import warnings
from typing import TextIO

from codec.cli.console import EXIT_ERROR
from codec.cli.parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(args)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A warning as one line in the command's own words, not Python's file-and-line form."""
    from codec.io.files import terminal_safe

    print(f"moec: warning: {terminal_safe(' '.join(str(message).split()))}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from codec.errors import MoecError
    from codec.io.files import terminal_safe

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
            print(f"  {terminal_safe(info.describe())}", file=sys.stderr)
        # Messages quote paths and values read from files: nothing in them may act on the terminal.
        print(f"moec: error: {terminal_safe(exc)}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        if os.environ.get("MOEC_DEBUG"):
            raise
        print(f"moec: error: {terminal_safe(exc)}", file=sys.stderr)
    except KeyboardInterrupt:
        print("moec: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("moec: error: out of memory", file=sys.stderr)
    except Exception as exc:  # the promise is one line, never a traceback
        if os.environ.get("MOEC_DEBUG"):
            raise
        print(
            f"moec: error: unexpected {type(exc).__name__}: {terminal_safe(exc)} (MOEC_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
