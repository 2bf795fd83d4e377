"""Rank-0 progress reporting: a log line every `log_every` steps, and a tqdm bar on a terminal.

Why both: pod logs (not a TTY) need self-contained lines that say where training is (step/total,
epoch, global samples/s, ETA, loss terms, cos_v, lr, data-wait fraction); someone running the demo at
a terminal wants a live bar. Throughput is measured over the window since the last line, so a slow
first step (compilation, warm-up) does not distort it for the whole run.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping

log = logging.getLogger("gbcosface.train")


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class ProgressLog:
    def __init__(self, total_steps: int, start_step: int, global_batch: int, log_every: int, enabled: bool) -> None:
        self.total = total_steps
        self.global_batch = global_batch
        self.log_every = max(1, log_every)
        self.enabled = enabled
        self._window_start = time.perf_counter()
        self._window_steps = 0
        self._window_wait = 0.0
        self._bar = None
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def step(self, step: int, epoch: int, data_wait: float, terms: Mapping[str, float], lr: float) -> None:
        """Record one finished step (`step` = steps done so far)."""
        if not self.enabled:
            return
        self._window_steps += 1
        self._window_wait += data_wait
        if self._bar is not None:
            self._bar.update(1)
            if step % self.log_every == 0:
                self._bar.set_postfix(loss=f"{terms.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}")
        if step % self.log_every != 0 and step != self.total:
            return
        elapsed = time.perf_counter() - self._window_start
        sps = self._window_steps * self.global_batch / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) * elapsed / self._window_steps if self._window_steps else 0.0
        wait = self._window_wait / elapsed if elapsed > 0 else 0.0
        loss_txt = " ".join(f"{k}={v:.4f}" for k, v in terms.items() if k != "cos_v")
        cos_v = terms.get("cos_v")
        cos_txt = f" cos_v={cos_v:.4f}" if cos_v is not None else ""
        log.info("step %d/%d epoch %d | %.1f samples/s | eta %s | %s%s | lr %.3e | data wait %.0f%%",
                 step, self.total, epoch, sps, _fmt_duration(eta), loss_txt, cos_txt, lr, 100 * wait)
        self._window_start = time.perf_counter()
        self._window_steps = 0
        self._window_wait = 0.0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
