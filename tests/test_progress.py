"""Progress lines of long work (deeplab_dpc.progress)."""

import contextlib
import io

from deeplab_dpc import progress


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_every_item_with_its_time_and_an_eta():
    clock, lines = _Clock(), []
    done = progress.Progress("variant", 3, log=lines.append, clock=clock)
    clock.now += 4
    done.advance("float32", "converted and checked")
    clock.now += 2
    done.advance("int8", "converted and checked")
    clock.now += 150
    done.advance("qat_int8", "converted and checked")
    assert lines == [
        "variant 1/3 (float32): converted and checked in 4.0 s; 4 s elapsed, "
        "ETA 8 s",
        "variant 2/3 (int8): converted and checked in 2.0 s; 6 s elapsed, ETA 3 s",
        "variant 3/3 (qat_int8): converted and checked in 150.0 s; 3 min "
        "elapsed, done",
    ]
    assert all(progress.is_progress_line(line) for line in lines)


def test_a_tenth_of_many_items_and_the_last():
    clock, lines = _Clock(), []
    done = progress.Progress("qat_int8 fine-tuning step", 25, log=lines.append, clock=clock)
    for _ in range(25):
        clock.now += 1
        done.advance(detail="loss 0.5000")
    assert [line.split(":")[0] for line in lines] == [
        f"qat_int8 fine-tuning step {n}/25" for n in (2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25)
    ]
    assert lines[0] == "qat_int8 fine-tuning step 2/25: loss 0.5000; 2 s elapsed, ETA 23 s"
    assert lines[-1].endswith("25 s elapsed, done")


def test_track_counts_what_the_consumer_finished():
    clock, lines = _Clock(), []
    done = progress.Progress("batch", 2, log=lines.append, clock=clock)
    for _ in done.track(["a", "b"], label=str):
        clock.now += 3
    assert lines == [
        "batch 1/2 (a); 3 s elapsed, ETA 3 s",
        "batch 2/2 (b); 6 s elapsed, done",
    ]


def test_lines_go_to_standard_error_and_are_told_from_other_lines():
    with contextlib.redirect_stderr(io.StringIO()) as err:
        progress.Progress("model", 1).advance("dpc", "exported")
    assert err.getvalue().startswith("model 1/1 (dpc): exported in ")
    for other in (
        "W0000 00:00:1796631928.948909 1974 port.cc:153] oneDNN custom operations",
        "WARNING:tensorflow:Skipping 3/4 layers",
        "/usr/lib/python3/site.py:12: UserWarning: 1/2",
        "Traceback (most recent call last):",
    ):
        assert not progress.is_progress_line(other), other
    assert progress.format_seconds(7300) == "2.0 h"
