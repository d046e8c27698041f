"""The command line's terminal side: a progress bar and notices from engine events, Ctrl-C as a
cancel request, and the libraries' own progress bars switched off for ``--quiet``."""

from __future__ import annotations

import signal
import sys


def silence_library_progress() -> None:
    """No progress bars from transformers and huggingface_hub (their weight-loading bars) in this process.

    Process-wide switches of those libraries, so only the command line (the application) flips them.
    """
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()


def install_interrupt(cancel):
    """First Ctrl-C asks the run to stop at the next iteration; a second one interrupts at once."""

    def on_interrupt(signum, frame):
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()

    try:
        return signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        return signal.getsignal(signal.SIGINT)


class ProgressPrinter:
    """Turns engine events into a progress bar with ETA (tqdm) and one-line notices on stderr."""

    def __init__(self, *, quiet: bool = False):
        self.quiet = quiet
        self.bar = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        from .events import NoticeEvent, StageEvent, StepEvent

        if isinstance(event, NoticeEvent):
            self._write(f"notice: {event.message}")
        elif isinstance(event, StageEvent) and not self.quiet:
            self._write(f"{event.name}: {event.detail}" if event.detail else event.name)
        elif isinstance(event, StepEvent) and not self.quiet:
            if self.bar is None:
                self.bar = tqdm(
                    total=event.total, initial=event.step - 1, unit="it", dynamic_ncols=True, file=sys.stderr
                )
            self.bar.set_postfix(loss=f"{event.losses.get('total', float('nan')):.4f}", refresh=False)
            self.bar.update(event.step - self.bar.n)

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class DownloadBar:
    """Turns :class:`engine.downloads.DownloadProgress` into a byte progress bar on stderr: the file,
    bytes done of the total, speed and time left."""

    def __init__(self):
        self.bar = None

    def __call__(self, progress) -> None:
        from tqdm import tqdm

        from .downloads import format_size

        if self.bar is None:
            self.bar = tqdm(total=progress.total_bytes, unit="B", unit_scale=True, dynamic_ncols=True, file=sys.stderr,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B{postfix}")
        self.bar.total = progress.total_bytes
        left = "" if progress.seconds_left is None else f", {_duration(progress.seconds_left)} left"
        self.bar.set_description_str(f"{progress.repo_id.split('/')[-1]}/{progress.filename}", refresh=False)
        self.bar.set_postfix_str(f"{format_size(progress.bytes_per_second)}/s{left}", refresh=False)
        self.bar.update(progress.done_bytes - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    """``1:05:03`` / ``4:07`` / ``12 s``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
