"""Checks of the PNG files the report and the figures write (test_report.py,
test_figures.py)."""
import struct
import zlib


def check_png(path):
    """A whole PNG: signature, IHDR first with a size over 100 x 100, IEND last, CRCs right;
    and matplotlib reads it back."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, chunks = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, (path, kind)
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", path
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert width > 100 and height > 100, (path, width, height)
    import matplotlib.image
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0  # something was drawn
