"""What the fault tests share: a CLI call with its output, the one line an error must be,
and a row's values in a form that compares (arrays as lists, NaN equal to NaN)."""

from __future__ import annotations

from engine.cli import main


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``warmstart ARGV`` in this process: (exit status, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    """The single non-blank line of ``err``; fails on more, or on a traceback."""
    lines = [line for line in err.strip("\n").splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def plain(value):
    """A value as it compares: arrays as lists, NaN as the string 'nan' (equal to itself)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return "nan" if isinstance(value, float) and value != value else value
