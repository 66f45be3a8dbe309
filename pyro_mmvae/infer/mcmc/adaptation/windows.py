"""Stan's warmup schedule for the mass matrix: a fast init buffer, doubling slow windows, a terminal buffer.

During the init buffer (75 iterations by default) only the step size adapts, while the chain finds the
bulk. The slow windows (25, 50, 100, ... iterations) each estimate the metric from their own draws;
at each window's end the metric is replaced and the step-size adaptation restarts. The terminal
buffer (50) lets the step size settle for the final metric.
"""

from __future__ import annotations

__all__ = ["AdaptationWindows", "adaptation_windows"]


def adaptation_windows(
    warmup_steps: int, init_buffer: int = 75, term_buffer: int = 50, base_window: int = 25
) -> list[tuple[int, int]]:
    """Stan's slow mass-matrix windows ``[(start, end), ...]`` (iteration indices, end exclusive).

    Fewer than 20 warmup steps: no window (step size only). A window is stretched to the terminal
    buffer when the next (doubled) one would not fit. When the three defaults do not fit, the init
    buffer becomes 15 % of the warmup, one window fills the middle, and the terminal buffer keeps
    a third of the warmup (at most ``term_buffer``; Stan keeps 10 %): after the last metric update
    the step size's dual averaging restarts, and with Stan's 6 iterations at 60 warmup steps some
    targets end warmup with a step size ~4x too large (acceptance ~0).
    """
    w = int(warmup_steps)
    if w < 20:
        return []
    if init_buffer + base_window + term_buffer > w:
        init_buffer, term_buffer = int(0.15 * w), max(int(0.1 * w), min(term_buffer, w // 3))
        base_window = w - init_buffer - term_buffer
    last = w - term_buffer
    windows, start, size = [], init_buffer, base_window
    end = start + size
    while True:
        if end + 2 * size > last:
            end = last
        windows.append((start, end))
        if end >= last:
            return windows
        start, size = end, 2 * size
        end = start + size


class AdaptationWindows:
    """The schedule of one warmup: which iterations feed the variance estimate, and where windows end.

    Args:
        warmup_steps, init_buffer, term_buffer, base_window: as for :func:`adaptation_windows`.
    """

    def __init__(self, warmup_steps: int, init_buffer: int = 75, term_buffer: int = 50, base_window: int = 25):
        self.windows = adaptation_windows(warmup_steps, init_buffer, term_buffer, base_window)
        self._ends = {end for _, end in self.windows}

    def in_window(self, t: int) -> bool:
        """Whether warmup iteration ``t`` (0-based) lies in a slow window (its state feeds the estimate)."""
        return any(s <= t < e for s, e in self.windows)

    def ends_window(self, done: int) -> bool:
        """Whether a window ends once ``done`` warmup iterations are complete (time to update the metric)."""
        return done in self._ends
