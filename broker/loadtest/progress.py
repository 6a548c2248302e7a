"""The live progress display (rich), on standard error, only when that is a terminal.

It only reads the run's state, twice a second; turning it off (``--quiet``, or output
that is not a TTY) changes nothing else about a run.
"""

from __future__ import annotations

import sys
from typing import TextIO

import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from broker.loadtest.latency import percentiles_ms
from broker.loadtest.state import RunState

__all__ = ["Display", "want_display"]

REFRESH_S = 0.5


def want_display(quiet: bool, stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return not quiet and stream.isatty()


def _fmt(v: float | None, unit: str = "") -> str:
    return "–" if v is None else f"{v:,.1f}{unit}" if isinstance(v, float) else f"{v:,}{unit}"


class Display:
    """``with Display(state) as d:`` shows the run; ``await d.run()`` keeps refreshing it."""

    def __init__(self, state: RunState, console: Console | None = None) -> None:
        self.state = state
        self.console = console or Console(stderr=True)
        self._live: Live | None = None
        self._last = (0.0, 0, 0)
        self._rates = (0.0, 0.0)

    def render(self) -> Table:
        st = self.state
        led = st.ledger
        now = st.clock()
        t0, c0, d0 = self._last
        if now - t0 >= 1.0:
            dt = now - t0 if t0 else 1.0
            self._rates = ((led.confirmed - c0) / dt, (led.delivered - d0) / dt)
            self._last = (now, led.confirmed, led.delivered)
        sc = st.scenario
        table = Table(
            title=f"dueslag bench · {sc.name} · {sc.mode} · {st.phase} · {st.elapsed():.1f} s",
            show_header=True,
            expand=False,
        )
        for col in ("", "count", "per s", "p50 ms", "p99 ms"):
            table.add_column(col, justify="right")
        none: list[float | None] = [None, None]
        cl: list[float | None] = [*(percentiles_ms(st.confirm_latency.total, [50.0, 99.0]) or none)]
        dl: list[float | None] = [*(percentiles_ms(st.deliver_latency.total, [50.0, 99.0]) or none)]
        table.add_row("sent", _fmt(led.sent), "", "", "")
        table.add_row(
            "confirmed", _fmt(led.confirmed), _fmt(self._rates[0]), _fmt(cl[0]), _fmt(cl[1])
        )
        table.add_row(
            "delivered", _fmt(led.delivered), _fmt(self._rates[1]), _fmt(dl[0]), _fmt(dl[1])
        )
        table.add_row("outstanding", _fmt(led.outstanding), "", "", "")
        odd = led.duplicates + led.misrouted + led.foreign + sum(led.refused_by_code.values())
        table.add_row("dup/misrouted/refused", _fmt(odd), "", "", "")
        table.add_row("retries/errors", _fmt(sum(st.events.values())), "", "", "")
        return table

    def __enter__(self) -> Display:
        self._live = Live(self.render(), console=self.console, auto_refresh=False, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.__exit__(None, None, None)
            self._live = None

    async def run(self) -> None:
        """Refresh until cancelled."""
        while True:
            if self._live is not None:
                self._live.update(self.render(), refresh=True)
            await trio.sleep(REFRESH_S)
