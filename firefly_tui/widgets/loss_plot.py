"""A loss curve drawn with Unicode braille dots: train loss, its smoothed line and eval points.

Each character cell holds 2x4 dots, so a 60x12 widget plots 120x48 points. Series are drawn in
order (raw, smoothed, eval) and a cell takes the colour of the last series that touched it, so
the smoothed line stays readable over the noisy raw one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

# Bit of each dot in a braille cell, indexed [row][col] (Unicode braille pattern layout).
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
_BRAILLE = 0x2800


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


@dataclass
class Series:
    points: list[tuple[float, float]]  # (step, loss)
    style: str
    line: bool = True  # join neighbouring points; False = dots only (eval)


@dataclass
class BrailleCanvas:
    width: int  # cells
    height: int  # cells
    cells: dict[tuple[int, int], int] = field(default_factory=dict)
    styles: dict[tuple[int, int], str] = field(default_factory=dict)

    def dot(self, x: int, y: int, style: str) -> None:
        """Set the dot at pixel (x, y), y=0 at the top."""
        if not (0 <= x < self.width * 2 and 0 <= y < self.height * 4):
            return
        cell = (x // 2, y // 4)
        self.cells[cell] = self.cells.get(cell, 0) | _DOTS[y % 4][x % 2]
        self.styles[cell] = style

    def line(self, x0: int, y0: int, x1: int, y1: int, style: str) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            self.dot(round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps), style)

    def rows(self) -> list[Text]:
        out = []
        for cy in range(self.height):
            row = Text()
            for cx in range(self.width):
                bits = self.cells.get((cx, cy))
                if bits:
                    row.append(chr(_BRAILLE + bits), self.styles[(cx, cy)])
                else:
                    row.append(" ")
            out.append(row)
        return out


def render_plot(series: list[Series], width: int, height: int, empty: str = "") -> Text:
    """The plot with a y axis (max/min loss) and an x axis (first/last step) as rich Text."""
    pts = [p for s in series for p in s.points if math.isfinite(p[1])]
    if not pts or width < 12 or height < 3:
        return Text(empty, style="dim")
    ys = [p[1] for p in pts]
    xs = [p[0] for p in pts]
    y_lo, y_hi = min(ys), max(ys)
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_hi = x_lo + 1
    label_w = max(len(f"{y_hi:.3g}"), len(f"{y_lo:.3g}")) + 1
    plot_w, plot_h = width - label_w - 1, height - 1
    canvas = BrailleCanvas(plot_w, plot_h)
    px_w, px_h = plot_w * 2 - 1, plot_h * 4 - 1

    def to_px(x: float, y: float) -> tuple[int, int]:
        return (
            round((x - x_lo) / (x_hi - x_lo) * px_w),
            round((y_hi - y) / (y_hi - y_lo) * px_h),
        )

    for s in series:
        prev = None
        for x, y in s.points:
            if not math.isfinite(y):
                prev = None
                continue
            p = to_px(x, y)
            if s.line and prev is not None:
                canvas.line(*prev, *p, s.style)
            else:
                canvas.dot(*p, s.style)
                if not s.line:  # eval points: a 2x2 blob so they stand out
                    canvas.dot(p[0] + 1, p[1], s.style)
                    canvas.dot(p[0], p[1] + 1, s.style)
                    canvas.dot(p[0] + 1, p[1] + 1, s.style)
            prev = p
    out = Text()
    for i, row in enumerate(canvas.rows()):
        label = f"{y_hi:.3g}" if i == 0 else f"{y_lo:.3g}" if i == plot_h - 1 else ""
        out.append(label.rjust(label_w - 1) + " ┤" if label else " " * label_w + "│", "dim")
        out.append_text(row)
        out.append("\n")
    left, right = f"{x_lo:g}", f"{x_hi:g}"
    axis = " " * label_w + "└" + left + " " * max(1, plot_w - len(left) - len(right) - 1) + right
    out.append(axis, "dim")
    return out


class LossPlot(Widget):
    """Train loss (raw and smoothed) and eval loss against the step."""

    DEFAULT_CSS = """
    LossPlot { height: 12; }
    """

    train: reactive[tuple] = reactive((), layout=False)
    eval: reactive[tuple] = reactive((), layout=False)

    def __init__(self, *, empty_text: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.empty_text = empty_text

    def set_data(self, train: list[tuple[float, float]], eval: list[tuple[float, float]]) -> None:
        self.train = tuple(train)
        self.eval = tuple(eval)

    def render(self) -> Text:
        train = list(self.train)
        smoothed = list(zip([p[0] for p in train], smooth([p[1] for p in train])))
        series = [
            Series(train, "grey50"),
            Series(smoothed, "bold cyan"),
            Series(list(self.eval), "bold yellow", line=False),
        ]
        return render_plot(series, self.size.width, self.size.height, self.empty_text)
