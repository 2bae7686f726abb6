"""What Lightning prints through the CLI: its info lines stay, its cloud-logger advertisement goes."""

from __future__ import annotations

import logging

import pytest

from vitp_geo.cli.main import LIGHTNING_INFO_LOGGER, quiet_lightning_tips


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lightning_log():
    log = logging.getLogger(LIGHTNING_INFO_LOGGER)
    filters, level = list(log.filters), log.level
    for f in filters:
        log.removeFilter(f)
    log.setLevel(logging.INFO)
    handler = _Keep()
    log.addHandler(handler)
    yield handler
    log.removeHandler(handler)
    for f in list(log.filters):
        log.removeFilter(f)
    for f in filters:
        log.addFilter(f)
    log.setLevel(level)


def _trainer_lines(handler: _Keep) -> list[str]:
    import lightning as L

    handler.lines.clear()
    L.Trainer(logger=False, accelerator="cpu", devices=1, enable_progress_bar=False)
    return list(handler.lines)


def test_cli_drops_the_cloud_logger_tip_and_keeps_every_other_lightning_line(lightning_log):
    """Behaviour, not Lightning's wording: after the filter, a Trainer logs exactly the lines it
    logged before minus those the filter refuses, and the filter refuses a cloud-logger tip only."""
    log = logging.getLogger(LIGHTNING_INFO_LOGGER)
    before = _trainer_lines(lightning_log)
    quiet_lightning_tips()
    quiet_lightning_tips()  # idempotent: main() may run many times in one process
    assert len(log.filters) == 1
    after = _trainer_lines(lightning_log)
    assert after == [ln for ln in before if log.filter(logging.makeLogRecord({"msg": ln}))]
    assert after  # the device summary and the rest stay
    tip = "Tip: for cloud logging and model checkpointing, pip install litlogger"
    assert not log.filter(logging.makeLogRecord({"msg": tip}))
    for kept in ("GPU available: False, used: False", "TPU available: False", "`Trainer.fit` stopped"):
        assert log.filter(logging.makeLogRecord({"msg": kept}))
