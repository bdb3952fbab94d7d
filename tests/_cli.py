"""Running the ``advdet`` command in-process in tests (shared by the CLI tests)."""

from sklearn_advdet.cli import main


def run_cli(argv, capsys):
    """``(exit status, stdout, stderr)`` of ``advdet argv``."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *needles):
    """A user error: exit 2, one line on stderr holding every needle, no traceback."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
