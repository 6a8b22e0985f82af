"""Progress for long runs: a bar on a terminal, a few plain lines in a log file or a pipe."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def _duration(seconds: float) -> str:
    """12.3s, 4m05s, 1h02m: short enough for a log line."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """Counts work done. On a terminal it draws a tqdm bar; elsewhere it writes one line per tenth
    of the work, so a log keeps the progress without a bar's carriage returns."""

    def __init__(self, total: int, desc: str, unit: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.done = 0
        self._started = time.perf_counter()
        self._next_line = 0.1
        tty = self.stream.isatty()
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream) if self.enabled and tty else None
        self._lines = self.enabled and not tty

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines and self.done / self.total >= self._next_line and self.done < self.total:
            self._line()
            self._next_line = (int(self.done / self.total * 10) + 1) / 10

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._lines:
            self._line()

    def _line(self) -> None:
        seconds = time.perf_counter() - self._started
        rate = self.done / seconds if seconds > 0 else 0.0
        left = f", ETA {_duration((self.total - self.done) / rate)}" if rate > 0 and self.done < self.total else ""
        print(
            f"{self.desc}: {self.done}/{self.total} {self.unit}s ({self.done / self.total:.0%}) in {_duration(seconds)}, "
            f"{rate:.1f} {self.unit}s/s{left}",
            file=self.stream,
            flush=True,
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
