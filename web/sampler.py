"""The served dashboard records every app's memory once every `memory_sample_seconds`
(30 by default; the memory chart's points), in a thread of its own."""

from __future__ import annotations

import logging
import threading
import time

from opus_paas.run import metrics
from opus_paas.settings import Settings
from opus_paas.store import Store

log = logging.getLogger(__name__)


def start(settings: Settings) -> threading.Thread:
    thread = threading.Thread(target=_run, args=(settings,), name="memory-sampler",
                              daemon=True)
    thread.start()
    return thread


def _run(settings: Settings) -> None:
    store = Store(settings.db_path)
    store.init()
    while True:
        try:
            metrics.sample_memory(settings, store, time.time())
        except Exception:   # a hiccup (supervisor restarting) must not end sampling
            log.exception("sampling memory failed; trying again")
        time.sleep(settings.memory_sample_seconds)
