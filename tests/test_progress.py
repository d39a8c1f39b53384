"""sqref.progress: the ETA arithmetic and what a non-terminal stream sees."""
import io

from sqref.progress import Progress, eta_text


def test_eta_text_literal():
    assert eta_text(10.0, 2, 10) == "ETA 40s"  # 5 s per unit, 8 left
    assert eta_text(30.0, 1, 4) == "ETA 1m30s"
    assert eta_text(5.0, 0, 4) == "" and eta_text(5.0, 4, 4) == ""


def test_off_a_terminal_lines_are_periodic_and_final():
    stream = io.StringIO()  # not a tty
    bar = Progress(4, "work", stream=stream, every=0.0)
    bar.update(1)
    bar.update(2, "half")
    bar.close("done")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("work: 1/4 after") and "ETA" in lines[0]
    assert lines[1].endswith("half") and lines[2].startswith("work: 2/4 in") and lines[2].endswith("done")
    quiet = io.StringIO()
    bar = Progress(4, "work", stream=quiet, every=3600.0)
    bar.update(1)
    bar.close()
    assert len(quiet.getvalue().splitlines()) == 1  # only the final line within the interval


def test_disabled_is_silent():
    stream = io.StringIO()
    bar = Progress(4, "work", stream=stream, enabled=False, every=0.0)
    bar.update(1)
    bar.close("x")
    assert stream.getvalue() == ""
