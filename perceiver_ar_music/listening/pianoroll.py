"""Piano-roll PNG images of note lists, drawn in numpy and written by a small stdlib PNG encoder.

Notes are the (N, 4) float arrays of ``events.ids_to_notes``: columns pitch, start, end,
velocity, times in seconds. Time runs left to right from 0 s, pitch bottom to top, cropped to the
notes' range plus a margin. Notes that start before the primer boundary are blue, the
continuation is orange, and a bright vertical line marks the boundary; louder notes are brighter
and every onset column is highlighted so that repeated notes stay apart. Horizontal lines mark
every C (labelled C4 etc.), vertical lines mark seconds (a coarser step when the roll is dense),
labelled m:ss.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from perceiver_ar_music.runtime.atomic import write_bytes_atomic

PIXELS_PER_SECOND = 40.0
ROW_PIXELS = 4
MAX_WIDTH = 6000
PITCH_MARGIN = 3
EMPTY_PITCH_RANGE = (48, 72)
LEFT_MARGIN = 30
BOTTOM_MARGIN = 16
TOP_MARGIN = 4
RIGHT_MARGIN = 8
TEXT_SCALE = 2
MIN_GRID_SPACING = 12  # pixels between second lines
MIN_LABEL_SPACING = 48  # pixels between time labels
SECOND_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 3600)

BACKGROUND = np.array([17, 19, 24], dtype=np.float64)
BLACK_KEY_ROW = np.array([23, 26, 32], dtype=np.float64)
SECOND_LINE = np.array([38, 42, 52], dtype=np.float64)
OCTAVE_LINE = np.array([72, 78, 96], dtype=np.float64)
LABEL = np.array([150, 156, 170], dtype=np.float64)
PRIMER = np.array([84, 160, 255], dtype=np.float64)
CONTINUATION = np.array([255, 150, 48], dtype=np.float64)
BOUNDARY = np.array([255, 255, 255], dtype=np.float64)
MIN_BRIGHTNESS = 0.3  # of a velocity-1 note; velocity 127 is full colour
ONSET_LIGHTEN = 0.35

BLACK_KEYS = {1, 3, 6, 8, 10}

# A 3x5 pixel font for the labels: rows top to bottom, '#' = ink.
GLYPHS = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
    "C": (".##", "#..", "#..", "#..", ".##"),
    "-": ("...", "...", "###", "...", "..."),
    ":": ("...", ".#.", "...", ".#.", "..."),
}


def write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image as an 8-bit RGB PNG, atomically."""
    write_bytes_atomic(path, png_bytes(rgb))


def png_bytes(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 image encoded as PNG (colour type 2, no interlace, filter 0 rows)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape[:2]:
        raise ValueError(f"expected a non-empty (H, W, 3) uint8 image, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # a leading 0 byte: filter "None"
    rows[:, 1:] = rgb.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def draw_piano_roll(
    notes: np.ndarray,
    boundary_s: float | None,
    path: str | os.PathLike[str],
    *,
    pixels_per_second: float = PIXELS_PER_SECOND,
    row_pixels: int = ROW_PIXELS,
    max_width: int = MAX_WIDTH,
) -> tuple[int, int]:
    """Draw `notes` (see module docstring) as a PNG at `path`; returns its (width, height).

    ``boundary_s`` is the primer's end in seconds; with None the notes are one piece, drawn in
    the primer colour without a boundary line. The roll is ``pixels_per_second`` wide per second
    up to ``max_width`` pixels in all (longer pieces are squeezed) and ``row_pixels`` per pitch.
    """
    image = piano_roll_image(
        notes, boundary_s, pixels_per_second=pixels_per_second, row_pixels=row_pixels, max_width=max_width
    )
    write_png(path, image)
    return image.shape[1], image.shape[0]


def rows_for_height(notes: np.ndarray, min_plot_height: int, max_row_pixels: int = 10) -> int:
    """Pixels per pitch so that the roll's notes area is at least `min_plot_height` tall (a narrow
    pitch range gets taller lanes), at least `ROW_PIXELS` and at most `max_row_pixels`."""
    layout = RollLayout(np.asarray(notes, dtype=np.float64).reshape(-1, 4), None, PIXELS_PER_SECOND, 1, MAX_WIDTH)
    rows = layout.high - layout.low + 1
    return int(min(max_row_pixels, max(ROW_PIXELS, -(-min_plot_height // rows))))


def roll_geometry(notes: np.ndarray, boundary_s: float | None, row_pixels: int = ROW_PIXELS) -> dict[str, float]:
    """Where time lands on a roll drawn with these arguments: {"left": the pixel of 0 s,
    "pixels_per_second": ..., "width": ..., "height": ...} (for a page's playhead and scrolling)."""
    layout = RollLayout(np.asarray(notes, dtype=np.float64).reshape(-1, 4), boundary_s, PIXELS_PER_SECOND,
                        max(1, row_pixels), MAX_WIDTH)
    return {"left": LEFT_MARGIN, "pixels_per_second": layout.pixels_per_second, "width": layout.width,
            "height": layout.height}


class RollLayout:
    """Where seconds and pitches land on the canvas."""

    def __init__(self, notes: np.ndarray, boundary_s: float | None, pixels_per_second: float, row_pixels: int, max_width: int) -> None:
        duration = float(notes[:, 2].max()) if len(notes) else 0.0
        if boundary_s is not None:
            duration = max(duration, boundary_s)
        duration = max(duration, 1.0)
        plot_width = max_width - LEFT_MARGIN - RIGHT_MARGIN
        self.pixels_per_second = min(pixels_per_second, (plot_width - 1) / duration)
        self.duration = duration
        if len(notes):
            pitches = notes[:, 0].astype(np.int64)
            self.low = max(0, int(pitches.min()) - PITCH_MARGIN)
            self.high = min(127, int(pitches.max()) + PITCH_MARGIN)
        else:
            self.low, self.high = EMPTY_PITCH_RANGE
        self.row_pixels = row_pixels
        self.width = LEFT_MARGIN + int(np.ceil(duration * self.pixels_per_second)) + 1 + RIGHT_MARGIN
        self.height = TOP_MARGIN + (self.high - self.low + 1) * row_pixels + BOTTOM_MARGIN
        self.plot_bottom = TOP_MARGIN + (self.high - self.low + 1) * row_pixels

    def x(self, seconds: np.ndarray | float) -> np.ndarray:
        """Pixel column of a time."""
        return LEFT_MARGIN + np.floor(np.asarray(seconds, dtype=np.float64) * self.pixels_per_second).astype(np.int64)

    def row_top(self, pitch: np.ndarray | int) -> np.ndarray:
        """First pixel row of a pitch's lane."""
        return TOP_MARGIN + (self.high - np.asarray(pitch, dtype=np.int64)) * self.row_pixels


def piano_roll_image(
    notes: np.ndarray,
    boundary_s: float | None,
    *,
    pixels_per_second: float = PIXELS_PER_SECOND,
    row_pixels: int = ROW_PIXELS,
    max_width: int = MAX_WIDTH,
) -> np.ndarray:
    """The piano roll of `notes` as an (H, W, 3) uint8 array (see ``draw_piano_roll``)."""
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 4) if np.size(notes) else np.zeros((0, 4))
    if not np.isfinite(notes).all() or (len(notes) and notes[:, 1].min() < 0):
        raise ValueError("note times must be finite and not negative, pitches and velocities finite")
    if boundary_s is not None and not (np.isfinite(boundary_s) and boundary_s >= 0):
        raise ValueError(f"the boundary must be a time in seconds, got {boundary_s}")
    layout = RollLayout(notes, boundary_s, pixels_per_second, max(1, row_pixels), max_width)
    canvas = np.empty((layout.height, layout.width, 3), dtype=np.float64)
    canvas[:] = BACKGROUND
    _draw_lanes_and_grid(canvas, layout)
    _draw_notes(canvas, layout, notes, boundary_s)
    if boundary_s is not None:
        x = int(layout.x(boundary_s))
        canvas[TOP_MARGIN : layout.plot_bottom, max(x - 1, 0) : x + 1] = BOUNDARY
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _draw_lanes_and_grid(canvas: np.ndarray, layout: RollLayout) -> None:
    top, bottom = TOP_MARGIN, layout.plot_bottom
    right = int(layout.x(layout.duration)) + 1
    for pitch in range(layout.low, layout.high + 1):
        if pitch % 12 in BLACK_KEYS:
            y = int(layout.row_top(pitch))
            canvas[y : y + layout.row_pixels, LEFT_MARGIN:right] = BLACK_KEY_ROW
    grid_step = _step(layout.pixels_per_second, MIN_GRID_SPACING)
    label_step = _step(layout.pixels_per_second, MIN_LABEL_SPACING)
    for second in range(0, int(layout.duration) + 1, grid_step):
        x = int(layout.x(second))
        canvas[top:bottom, x] = SECOND_LINE
        if second % label_step == 0:
            _draw_text(canvas, f"{second // 60}:{second % 60:02d}", x, bottom + 3, LABEL)
    for pitch in range(layout.low, layout.high + 1):
        if pitch % 12 == 0:
            y = int(layout.row_top(pitch)) + layout.row_pixels - 1  # the C lane's bottom edge
            canvas[y, LEFT_MARGIN:right] = OCTAVE_LINE
            label_y = y - (5 * TEXT_SCALE) // 2
            _draw_text(canvas, f"C{pitch // 12 - 1}", 1, label_y, LABEL)


def _step(pixels_per_second: float, min_spacing: int) -> int:
    """The smallest whole-second step whose lines are at least `min_spacing` pixels apart."""
    for step in SECOND_STEPS:
        if step * pixels_per_second >= min_spacing:
            return step
    return SECOND_STEPS[-1]


def _draw_notes(canvas: np.ndarray, layout: RollLayout, notes: np.ndarray, boundary_s: float | None) -> None:
    if not len(notes):
        return
    pitch = np.clip(notes[:, 0], 0, 127).astype(np.int64)
    x0 = layout.x(notes[:, 1])
    x1 = np.maximum(layout.x(notes[:, 2]), x0 + 1)
    y0 = layout.row_top(pitch)
    lane = layout.row_pixels - 1 if layout.row_pixels >= 3 else layout.row_pixels  # 1-pixel gap
    is_primer = notes[:, 1] < boundary_s if boundary_s is not None else np.ones(len(notes), bool)
    brightness = MIN_BRIGHTNESS + (1 - MIN_BRIGHTNESS) * np.clip(notes[:, 3], 0, 127) / 127
    colours = np.where(is_primer[:, None], PRIMER, CONTINUATION)
    colours = BACKGROUND + (colours - BACKGROUND) * brightness[:, None]
    onsets = colours + (255 - colours) * ONSET_LIGHTEN
    for i in range(len(notes)):
        rows = slice(y0[i], y0[i] + lane)
        canvas[rows, x0[i] : x1[i]] = colours[i]
        canvas[rows, x0[i]] = onsets[i]


def _draw_text(canvas: np.ndarray, text: str, x: int, y: int, colour: np.ndarray) -> None:
    """Draw `text` in the 3x5 font scaled by TEXT_SCALE, top-left at (x, y), clipped."""
    height, width = canvas.shape[:2]
    for char in text:
        glyph = GLYPHS[char]
        for row, line in enumerate(glyph):
            for col, cell in enumerate(line):
                if cell != "#":
                    continue
                top, left = y + row * TEXT_SCALE, x + col * TEXT_SCALE
                t, b = max(top, 0), min(top + TEXT_SCALE, height)
                l, r = max(left, 0), min(left + TEXT_SCALE, width)
                if t < b and l < r:
                    canvas[t:b, l:r] = colour
        x += 4 * TEXT_SCALE
