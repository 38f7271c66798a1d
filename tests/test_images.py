"""Tests for spark.data.images (decoding one file, fitting to a size) and
spark.data.preprocess.channel_stats; every image is made here with Pillow."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spark.data.dataset import DataError
from spark.data.images import decode_image, fit_image, fit_images, parse_image_size
from spark.data.preprocess import channel_stats

RNG = np.random.default_rng(7)


def rgb(h=12, w=10):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(tmp_path, name, array_or_image, **kwargs):
    path = tmp_path / name
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(
        array_or_image)
    image.save(path, **kwargs)
    return path


# ----------------------------------------------------------------------------- modes

@pytest.mark.parametrize("name", ["a.png", "a.bmp", "a.webp", "a.tiff"])
def test_rgb_files_decode_to_their_pixels(tmp_path, name):
    pixels = rgb()
    extra = {"lossless": True} if name.endswith("webp") else {}
    out = decode_image(save(tmp_path, name, pixels, **extra))
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3)
    np.testing.assert_array_equal(out, pixels)


def test_grayscale_stays_one_channel(tmp_path):
    pixels = RNG.integers(0, 256, (9, 11), dtype=np.uint8)
    out = decode_image(save(tmp_path, "g.png", pixels))
    assert out.shape == (9, 11, 1)
    np.testing.assert_array_equal(out[:, :, 0], pixels)


def test_alpha_is_dropped(tmp_path):
    pixels = rgb()
    alpha = RNG.integers(0, 256, (12, 10, 1), dtype=np.uint8)
    out = decode_image(save(tmp_path, "a.png", np.concatenate([pixels, alpha], axis=2)))
    np.testing.assert_array_equal(out, pixels)
    gray = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
    la = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha[:, :, 0])])
    out = decode_image(save(tmp_path, "la.png", la))
    assert out.shape == (12, 10, 1)
    np.testing.assert_array_equal(out[:, :, 0], gray)


def test_palette_images_become_rgb(tmp_path):
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    index = RNG.integers(0, 16, (8, 8), dtype=np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette.ravel().tolist())
    for name in ("p.png", "p.gif"):
        out = decode_image(save(tmp_path, name, image))
        assert out.shape == (8, 8, 3)
        np.testing.assert_array_equal(out, palette[index])


def test_black_and_white_and_cmyk(tmp_path):
    bits = RNG.integers(0, 2, (8, 8)).astype(bool)
    out = decode_image(save(tmp_path, "b.png", Image.fromarray(bits)))
    assert out.shape == (8, 8, 1) and set(np.unique(out)) <= {0, 255}
    np.testing.assert_array_equal(out[:, :, 0] == 255, bits)
    cmyk = Image.fromarray(rgb(), "RGB").convert("CMYK")
    out = decode_image(save(tmp_path, "c.jpg", cmyk, quality=95))
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8


def test_sixteen_bit_grayscale_is_scaled_to_eight(tmp_path):
    values = np.array([[0, 128, 129, 257], [32767, 65279, 65535, 1000]], dtype=np.uint16)
    out = decode_image(save(tmp_path, "d.png", Image.fromarray(values)))
    assert out.shape == (2, 4, 1)
    np.testing.assert_array_equal(out[:, :, 0], np.rint(values / 257).astype(np.uint8))


def test_thirty_two_bit_integers_and_floats(tmp_path):
    values = np.array([[0, 257, 65535]], dtype=np.int32)
    out = decode_image(save(tmp_path, "i.tiff", Image.fromarray(values, "I")))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 1, 255]])
    with pytest.raises(DataError, match=r"neg\.tiff: 32-bit integer image .* -5\.\.7"):
        decode_image(save(tmp_path, "neg.tiff", Image.fromarray(np.array([[-5, 7]], np.int32),
                                                                "I")))
    floats = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = decode_image(save(tmp_path, "f.tiff", Image.fromarray(floats, "F")))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 128, 255]])
    with pytest.raises(DataError, match=r"big\.tiff: floating-point image .* outside 0\.\.1"):
        decode_image(save(tmp_path, "big.tiff", Image.fromarray(floats * 3, "F")))


def test_exif_orientation_turns_the_image_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers turn it 90 degrees clockwise
    out = decode_image(save(tmp_path, "o.jpg", rgb(12, 20), exif=exif))
    assert out.shape == (20, 12, 3)


def test_a_jpeg_shrinks_while_decoding_when_a_size_is_given(tmp_path):
    path = save(tmp_path, "big.jpg", np.zeros((256, 192, 3), np.uint8) + 90)
    assert decode_image(path).shape == (256, 192, 3)
    small = decode_image(path, shrink_to=(32, 32))
    assert 32 <= min(small.shape[:2]) and small.shape[0] < 256


# ----------------------------------------------------------------------------- bad files

def test_corrupt_truncated_empty_and_missing_files_are_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png at all" * 10)
    whole = save(tmp_path, "whole.png", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:400])
    jpeg = save(tmp_path, "whole.jpg", rgb(64, 64))
    cut_jpeg = tmp_path / "cut.jpg"
    cut_jpeg.write_bytes(jpeg.read_bytes()[:300])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path in (garbage, cut, cut_jpeg, empty):
        with pytest.raises(DataError) as info:
            decode_image(path)
        message = str(info.value)
        assert message.startswith(f"{path}: not a readable image") and "\n" not in message
    with pytest.raises(DataError, match=r"nothere\.png: no such file"):
        decode_image(tmp_path / "nothere.png")
    with pytest.raises(DataError, match="is a folder"):
        decode_image(tmp_path)


# ----------------------------------------------------------------------------- sizes

def test_fit_image_resizes_and_crops():
    image = rgb(40, 30)
    assert fit_image(image, (40, 30)) is image
    resized = fit_image(image, (16, 24))
    assert resized.shape == (16, 24, 3) and resized.dtype == np.uint8
    flat = np.full((40, 30, 1), 77, np.uint8)
    np.testing.assert_array_equal(fit_image(flat, (7, 9)), np.full((7, 9, 1), 77))
    np.testing.assert_array_equal(fit_image(image, (20, 10), crop=True), image[10:30, 10:20])
    np.testing.assert_array_equal(fit_image(image, (39, 29), crop=True), image[0:39, 0:29])
    with pytest.raises(DataError, match=r"^cat\.png is 40x30, smaller than the crop 32x32: "):
        fit_image(image, (32, 32), crop=True, where="cat.png")


def test_fit_images_on_an_array():
    images = RNG.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    assert fit_images(images, (28, 28)) is images
    cropped = fit_images(images, (24, 20), crop=True)
    np.testing.assert_array_equal(cropped, images[:, 2:26, 4:24])
    assert cropped.flags.c_contiguous
    resized = fit_images(images, (32, 32))
    assert resized.shape == (5, 32, 32, 1)
    np.testing.assert_array_equal(resized[3], fit_image(images[3], (32, 32)))
    with pytest.raises(DataError, match=r"^mnist: the images are 28x28, smaller than the crop"):
        fit_images(images, (32, 32), crop=True, where="mnist")


def test_parse_image_size():
    assert parse_image_size("32x32") == (32, 32)
    assert parse_image_size("28X20") == (28, 20)
    assert parse_image_size("64") == (64, 64)
    assert parse_image_size("24,32") == (24, 32)
    for bad in ("abc", "0x3", "3x", "-1x4", "1.5x2"):
        with pytest.raises(ValueError, match="image size"):
            parse_image_size(bad)


# ----------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("channels,chunk", [(3, 7), (1, 1000), (3, 1)])
def test_channel_stats_equals_numpy(channels, chunk):
    images = RNG.integers(0, 256, (60, 9, 7, channels), dtype=np.uint8)
    mean, std = (np.asarray(v) for v in channel_stats(images, chunk=chunk))
    scaled = images.astype(np.float64) / 255
    assert mean.shape == std.shape == (channels,)
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 1, 2)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 1, 2)), rtol=0, atol=1e-12)


def test_channel_stats_of_a_constant_channel_leaves_its_scale():
    images = RNG.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    images[..., 1] = 51
    mean, std = channel_stats(images)
    assert mean[1] == pytest.approx(0.2, abs=1e-15) and std[1] == 1.0


def test_channel_stats_reads_any_sliceable_object_chunk_by_chunk():
    images = RNG.integers(0, 256, (25, 4, 4, 3), dtype=np.uint8)

    class Lazy:
        shape = images.shape
        reads = []

        def __len__(self):
            return len(images)

        def __getitem__(self, index):
            self.reads.append(index)
            return images[index]

    lazy = Lazy()
    np.testing.assert_allclose(channel_stats(lazy, chunk=10), channel_stats(images), atol=1e-15)
    assert lazy.reads == [slice(0, 10), slice(10, 20), slice(20, 30)]

    class Pieces:
        def chunks(self):
            yield from (images[:3], images[3:])

    np.testing.assert_allclose(channel_stats(Pieces()), channel_stats(images), atol=1e-15)
    with pytest.raises(ValueError, match="no images"):
        channel_stats(images[:0])
    with pytest.raises(ValueError, match="uint8"):
        channel_stats(images.astype(np.float32))
