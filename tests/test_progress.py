"""Progress without a terminal: tqdm's refreshes become log lines, at most one per interval, plus the last."""

import logging
import re
import time

import pytest

from videoalign_ray.runtime.progress import every_s, progress


def test_without_a_terminal_progress_is_periodic_log_lines(caplog, monkeypatch):
    monkeypatch.setenv("VIDEOALIGN_PROGRESS_EVERY_S", "0.2")
    caplog.set_level(logging.INFO, logger="videoalign_ray.progress")
    t0 = time.monotonic()
    with progress(40, "decode videos", "video", tty=False) as bar:
        for _ in range(40):
            time.sleep(0.02)  # 0.8 s in all: ~4 intervals of 0.2 s
            bar.update(1)
    elapsed = time.monotonic() - t0
    lines = [r.getMessage() for r in caplog.records if r.name == "videoalign_ray.progress"]
    assert "\r" not in "".join(lines)
    assert all(line.startswith("decode videos:") for line in lines), lines
    assert "40/40" in lines[-1] and "video/s" in lines[-1]
    # one at the start, at most one per interval after it, and the final one
    assert 3 <= len(lines) <= 2 + int(elapsed / 0.2) + 1, (len(lines), elapsed, lines)
    done = [int(re.search(r"\| *(\d+)/40 ", line).group(1)) for line in lines]
    assert done[0] == 0 and done[-1] == 40 and any(0 < n < 40 for n in done), done  # lines in between


def test_a_training_loop_setting_its_loss_each_step_logs_a_few_lines_not_one_per_step(caplog, monkeypatch):
    """30 fast steps with ``set_postfix(loss=...)`` after each, as the step driver does: the start line and the
    end line (the interval is never reached), not 30 (``set_postfix`` refreshes by default in tqdm)."""
    monkeypatch.setenv("VIDEOALIGN_PROGRESS_EVERY_S", "30")
    caplog.set_level(logging.INFO, logger="videoalign_ray.progress")
    with progress(30, "train", "step", tty=False) as bar:
        for step in range(30):
            bar.set_postfix(loss=f"{1.0 / (step + 1):.4f}")
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records if r.name == "videoalign_ray.progress"]
    assert 1 <= len(lines) <= 3, lines
    assert "30/30" in lines[-1] and "loss=0.0333" in lines[-1], lines[-1]


def test_interval_must_be_a_positive_number(monkeypatch):
    monkeypatch.setenv("VIDEOALIGN_PROGRESS_EVERY_S", "0")
    with pytest.raises(ValueError, match="VIDEOALIGN_PROGRESS_EVERY_S"):
        every_s()
    monkeypatch.delenv("VIDEOALIGN_PROGRESS_EVERY_S")
    assert every_s() == 30.0
