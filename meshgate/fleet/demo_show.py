"""What the demo prints: headings, the commands a user would type, results with marks.

`Show(None)` prints nothing (the Python API and `meshgate demo --json`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

OK = "[bold green]✓[/bold green]"
FAIL = "[bold red]✗[/bold red]"


@dataclass
class StepResult:
    key: str  # stable name, for scripts and tests
    title: str
    ok: bool
    summary: str
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Show:
    def __init__(self, console: Console | None) -> None:
        self.console = console

    def _print(self, *args: Any, **kwargs: Any) -> None:
        if self.console is not None:
            self.console.print(*args, **kwargs)

    def banner(self, text: str, sub: str = "") -> None:
        self._print()
        self._print(f"[bold]{escape(text)}[/bold]")
        if sub:
            self._print(f"[dim]{escape(sub)}[/dim]")

    def heading(self, n: int, title: str) -> None:
        self._print()
        self._print(f"[bold cyan]{n}. {escape(title)}[/bold cyan]")

    def command(self, cmd: str) -> None:
        self._print(Text("   $ ", style="dim") + Text(cmd, style="bold"), soft_wrap=True)

    def note(self, text: str) -> None:
        self._print(f"   [dim]{escape(text)}[/dim]", soft_wrap=True)

    def block(self, text: str) -> None:
        """Command output, indented, never wrapped or cropped (tables keep their shape)."""
        lines = [line.rstrip() for line in text.rstrip().splitlines()]
        if lines:
            self._print(Text("\n".join("     " + line for line in lines)), soft_wrap=True, crop=False)

    def result(self, ok: bool, text: str) -> None:
        self._print(f"   {OK if ok else FAIL} {escape(text)}", soft_wrap=True)

    @contextmanager
    def stage(self, text: str) -> Iterator[None]:
        """A setup stage: a spinner while it runs, then ✓ (or ✗) with its time."""
        t0 = time.monotonic()
        if self.console is None:
            yield
            return
        ok = False
        try:
            with self.console.status(f"[bold]{escape(text)}[/bold]", spinner="dots"):
                yield
            ok = True
        finally:
            took = time.monotonic() - t0
            self._print(f"  {OK if ok else FAIL} {escape(text)} [dim]({took:.1f}s)[/dim]")
