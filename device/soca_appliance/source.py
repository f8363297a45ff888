"""What every audio source shares: one capture thread, started with a frame callback and
stopped on request. Subclasses implement ``_run(on_frame)`` and watch ``_stop``."""
from __future__ import annotations

import threading
from typing import Callable, Optional

from .framing import Frame


class ThreadedSource:
    name = "source"
    thread_name = "source"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, on_frame: Callable[[Frame], None]) -> None:
        self._thread = threading.Thread(target=self._run, args=(on_frame,),
                                        name=self.thread_name, daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, on_frame: Callable[[Frame], None]) -> None:
        raise NotImplementedError
