"""Piano-roll images and the PNG writer: chunk structure, CRCs and pixels read back exactly."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest

from perceiver_ar_music.listening import pianoroll as pr


def read_png(data: bytes) -> np.ndarray:
    """A strict reader of the PNGs ``png_bytes`` writes: checks the signature, the chunk order and
    every CRC, then undoes filter type 0 row by row."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"] and chunks[2][1] == b""
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(chunks[1][1])
    assert len(raw) == height * (1 + 3 * width)
    image = np.empty((height, width, 3), dtype=np.uint8)
    for y in range(height):
        line = raw[y * (1 + 3 * width) : (y + 1) * (1 + 3 * width)]
        assert line[0] == 0
        image[y] = np.frombuffer(line[1:], dtype=np.uint8).reshape(width, 3)
    return image


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (64, 33), (5, 1000)])
def test_png_round_trip(shape):
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    data = pr.png_bytes(image)
    np.testing.assert_array_equal(read_png(data), image)
    pil = pytest.importorskip("PIL.Image")  # an independent decoder, when installed
    with pil.open(io.BytesIO(data)) as decoded:
        assert decoded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(decoded), image)


def test_png_rejects_bad_arrays():
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError):
            pr.png_bytes(bad)


def test_draw_writes_the_image(tmp_path):
    notes = np.array([[60, 0.0, 1.0, 90], [67, 0.5, 2.0, 60]])
    size = pr.draw_piano_roll(notes, 1.0, tmp_path / "roll.png")
    image = read_png((tmp_path / "roll.png").read_bytes())
    assert size == (image.shape[1], image.shape[0])
    np.testing.assert_array_equal(image, pr.piano_roll_image(notes, 1.0))


def pixel(image: np.ndarray, layout: pr.RollLayout, seconds: float, pitch: int) -> list[int]:
    return image[int(layout.row_top(pitch)) + 1, int(layout.x(seconds))].tolist()


def colour(rgb: np.ndarray) -> list[int]:
    return np.rint(rgb).astype(int).tolist()


def test_primer_continuation_and_boundary():
    notes = np.array([[60, 1.0, 2.0, 127], [64, 3.0, 4.0, 127], [62, 2.0, 3.5, 127]])
    image = pr.piano_roll_image(notes, 2.5)
    layout = pr.RollLayout(notes, 2.5, pr.PIXELS_PER_SECOND, pr.ROW_PIXELS, pr.MAX_WIDTH)
    assert pixel(image, layout, 1.5, 60) == colour(pr.PRIMER)
    assert pixel(image, layout, 3.5, 64) == colour(pr.CONTINUATION)
    assert pixel(image, layout, 3.0, 62) == colour(pr.PRIMER)  # coloured by where it starts
    onset = pixel(image, layout, 1.0, 60)
    assert all(o >= p for o, p in zip(onset, colour(pr.PRIMER))) and onset != colour(pr.PRIMER)
    boundary_column = image[pr.TOP_MARGIN : layout.plot_bottom, int(layout.x(2.5))]
    assert (boundary_column == colour(pr.BOUNDARY)).all()
    assert pixel(image, layout, 2.2, 64) != colour(pr.CONTINUATION)  # nothing drawn where no note is


def test_without_boundary_everything_is_one_piece():
    notes = np.array([[60, 0.0, 1.0, 127], [62, 5.0, 6.0, 127]])
    image = pr.piano_roll_image(notes, None)
    layout = pr.RollLayout(notes, None, pr.PIXELS_PER_SECOND, pr.ROW_PIXELS, pr.MAX_WIDTH)
    assert pixel(image, layout, 5.5, 62) == colour(pr.PRIMER)
    assert not (image == colour(pr.BOUNDARY)).all(axis=2).all(axis=0).any()


def test_velocity_is_brightness():
    notes = np.array([[60, 0.0, 1.0, 20], [60, 2.0, 3.0, 70], [60, 4.0, 5.0, 120]])
    image = pr.piano_roll_image(notes, None)
    layout = pr.RollLayout(notes, None, pr.PIXELS_PER_SECOND, pr.ROW_PIXELS, pr.MAX_WIDTH)
    levels = [sum(pixel(image, layout, t, 60)) for t in (0.5, 2.5, 4.5)]
    background = sum(colour(pr.BACKGROUND))
    assert background < levels[0] < levels[1] < levels[2]


def test_width_follows_duration_up_to_the_cap():
    def width(seconds: float, **kw) -> int:
        return pr.piano_roll_image(np.array([[60, 0.0, seconds, 80]]), None, **kw).shape[1]

    assert width(20.0) - width(10.0) == pytest.approx(10 * pr.PIXELS_PER_SECOND, abs=1)
    assert width(20.0, pixels_per_second=10) - width(10.0, pixels_per_second=10) == pytest.approx(100, abs=1)
    assert width(3600.0) <= pr.MAX_WIDTH and width(3600.0, max_width=900) <= 900


def test_pitch_range_is_cropped_to_the_notes():
    def height(*pitches: int) -> int:
        notes = np.array([[p, 0.0, 1.0, 80] for p in pitches])
        return pr.piano_roll_image(notes, None).shape[0]

    margins = pr.TOP_MARGIN + pr.BOTTOM_MARGIN
    assert height(60, 72) == margins + (12 + 2 * pr.PITCH_MARGIN + 1) * pr.ROW_PIXELS
    assert height(0, 127) == margins + 128 * pr.ROW_PIXELS
    assert height(1) == margins + (1 + 1 + pr.PITCH_MARGIN) * pr.ROW_PIXELS  # clipped at pitch 0


def test_octave_and_second_gridlines():
    notes = np.array([[55, 0.0, 0.5, 80], [74, 3.0, 4.0, 80]])
    image = pr.piano_roll_image(notes, None)
    layout = pr.RollLayout(notes, None, pr.PIXELS_PER_SECOND, pr.ROW_PIXELS, pr.MAX_WIDTH)
    c4_edge = int(layout.row_top(60)) + pr.ROW_PIXELS - 1
    assert image[c4_edge, int(layout.x(1.5))].tolist() == colour(pr.OCTAVE_LINE)
    assert image[c4_edge, pr.LEFT_MARGIN // 2 - 4 : pr.LEFT_MARGIN - 4].max() > 100  # the "C4" label
    y = int(layout.row_top(65)) + 1  # an F lane: white key, no notes
    assert image[y, int(layout.x(2.0))].tolist() == colour(pr.SECOND_LINE)
    assert image[y, int(layout.x(2.5))].tolist() == colour(pr.BACKGROUND)


def test_empty_and_bad_input():
    image = pr.piano_roll_image(np.zeros((0, 4)), None)
    low, high = pr.EMPTY_PITCH_RANGE
    assert image.shape[0] == pr.TOP_MARGIN + pr.BOTTOM_MARGIN + (high - low + 1) * pr.ROW_PIXELS
    with pytest.raises(ValueError):
        pr.piano_roll_image(np.array([[60, -1.0, 1.0, 80]]), None)
    with pytest.raises(ValueError):
        pr.piano_roll_image(np.array([[60, 0.0, np.inf, 80]]), None)
    with pytest.raises(ValueError):
        pr.piano_roll_image(np.array([[60, 0.0, 1.0, 80]]), float("nan"))
