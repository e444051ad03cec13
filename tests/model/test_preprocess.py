"""decode_image: any image becomes the same (size, size, 3) uint8 RGB, or a clear error;
decoded_pixels: what decoding it will allocate, from the header alone."""

import base64
import io
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.errors import InvalidImageError
from model.preprocess import PILLOW_BLOCK_SIZE, decode_image, decoded_pixels


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge canvas (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


RED = (200, 30, 30)


class TestDecodeImage:
    """decode_image()."""

    @pytest.mark.parametrize(
        ("name", "data"),
        [
            ("jpeg", _encode(Image.new("RGB", (40, 30), RED), "JPEG", quality=95)),
            ("png", _encode(Image.new("RGB", (40, 30), RED), "PNG")),
            ("webp", _encode(Image.new("RGB", (40, 30), RED), "WEBP", lossless=True)),
            ("gif", _encode(Image.new("RGB", (40, 30), RED).convert("P"), "GIF")),
            ("cmyk jpeg", _encode(Image.new("RGB", (40, 30), RED).convert("CMYK"), "JPEG")),
            ("greyscale", _encode(Image.new("L", (40, 30), 90), "PNG")),
            ("1x1", _encode(Image.new("RGB", (1, 1), RED), "PNG")),
            ("1x10000", _encode(Image.new("RGB", (1, 10000), RED), "PNG")),
        ],
    )
    def test_any_format_becomes_rgb_of_the_size(self, name: str, data: bytes) -> None:
        """Each accepted format and mode decodes to (size, size, 3) uint8."""
        array = decode_image(data, 32)
        assert ((32, 32, 3), np.dtype("uint8")) == (array.shape, array.dtype)

    def test_colour_survives(self) -> None:
        """A flat red PNG stays that red."""
        array = decode_image(_encode(Image.new("RGB", (10, 10), RED), "PNG"), 8)
        assert RED == tuple(int(v) for v in array[4, 4])

    def test_alpha_is_composited_on_white(self) -> None:
        """A fully transparent pixel becomes white, not black."""
        image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
        array = decode_image(_encode(image, "PNG"), 4)
        assert (255, 255, 255) == tuple(int(v) for v in array[1, 1])

    def test_palette_with_transparency(self) -> None:
        """A palette image with a transparent index composites that index on white."""
        image = Image.new("P", (10, 10), 0)
        image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        array = decode_image(_encode(image, "PNG", transparency=0), 4)
        assert (255, 255, 255) == tuple(int(v) for v in array[1, 1])

    def test_sixteen_bit_keeps_contrast(self) -> None:
        """A 16-bit greyscale ramp keeps its dark-to-bright ramp after reduction to 8 bits."""
        ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (8, 1))
        image = Image.fromarray(ramp)  # mode I;16
        array = decode_image(_encode(image, "PNG"), 64)
        assert array[0, 0, 0] < 10
        assert array[0, -1, 0] > 240

    def test_animated_gif_uses_the_first_frame(self) -> None:
        """Only the first frame of an animation is used."""
        frames = [Image.new("RGB", (10, 10), c).convert("P") for c in (RED, (0, 0, 250))]
        buffer = io.BytesIO()
        frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
        array = decode_image(buffer.getvalue(), 4)
        assert array[2, 2, 0] > array[2, 2, 2]

    def test_exif_orientation_is_applied(self) -> None:
        """An image stored sideways with EXIF orientation 6 comes out upright."""
        stored = Image.new("RGB", (40, 20), (0, 0, 0))
        stored.paste((255, 255, 255), (0, 0, 20, 20))  # white on the stored left half
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        array = decode_image(_encode(stored, "PNG", exif=exif.tobytes()), 20)
        # Displayed 20 wide x 40 tall, resized to a square: the white half is now on top.
        assert array[2, 10, 0] > 200
        assert array[17, 10, 0] < 50

    def test_real_shared_photo(self, shared_data: Path) -> None:
        """A real shop photo decodes deterministically."""
        path = min((shared_data / "product-images" / "grocery").rglob("*.jpg"))
        first = decode_image(path.read_bytes(), 96)
        assert (96, 96, 3) == first.shape
        assert np.array_equal(first, decode_image(path, 96))

    @pytest.mark.parametrize(
        ("name", "data", "reason"),
        [
            ("html", b"<!doctype html><html><body>Welcome</body></html>", "not an image"),
            ("empty", b"", "not an image"),
            ("bomb", _png_header_only(100_000, 100_000), "exceeds the limit"),
            (
                "truncated jpeg",
                _encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")[:300],
                "corrupt",
            ),
            ("tiff", _encode(Image.new("RGB", (4, 4)), "TIFF"), "unsupported image format TIFF"),
        ],
    )
    def test_unusable_bytes(self, name: str, data: bytes, reason: str) -> None:
        """Bytes that are not a usable image raise InvalidImageError with the reason."""
        with pytest.raises(InvalidImageError, match=reason):
            decode_image(data, 32)

    def test_bad_png_crc(self) -> None:
        """A PNG whose data chunk fails its CRC is refused as corrupt."""
        data = bytearray(_encode(Image.effect_noise((16, 16), 40).convert("RGB"), "PNG"))
        idat = data.index(b"IDAT")
        data[idat + 8] ^= 0xFF
        with pytest.raises(InvalidImageError, match="corrupt"):
            decode_image(bytes(data), 8)

    def test_a_gif_frame_larger_than_its_screen_is_refused_before_allocation(self) -> None:
        """A 119-byte GIF whose first frame declares 65,496 x 60,280 pixels is refused at once."""
        # Found by `make fuzz` (bench/fuzz.py): with Pillow's own check off, opening it allocated
        # about 3.8 GB before decode_image's size check ran.
        data = base64.b64decode(
            "R0lGODlhKAAoAIAAAAAAAAAAACH5GgoABAAPAIAAYSgAKACAWwEAAAAAAAAAAAAAAAAAACH5BAAPAAAALAAAAADY"
            "/3jrsUqcI0VORK5CYILcyLGjx49DIIocSbKkyZMoU6pcybKly5cwY8qcSbOmzZs4CQYEADs="
        )
        began = time.monotonic()
        with pytest.raises(InvalidImageError, match="exceeds the limit"):
            decode_image(data, 32)
        assert time.monotonic() - began < 1.0

    def test_a_limit_above_the_default_is_honoured(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A caller's limit above the default lets a larger image through Pillow's own check."""
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
        header = _png_header_only(10_000, 10_000)  # 100 M pixels, no pixel data
        with pytest.raises(InvalidImageError, match="exceeds the limit"):
            decode_image(header, 8)
        with pytest.raises(InvalidImageError, match="corrupt"):  # opened; the data is missing
            decode_image(header, 8, max_pixels=200_000_000)

    def test_pixel_limit_is_configurable(self) -> None:
        """An image over a caller's smaller pixel limit is refused."""
        data = _encode(Image.new("RGB", (100, 100)), "PNG")
        with pytest.raises(InvalidImageError, match=r"exceeds the limit"):
            decode_image(data, 8, max_pixels=9_999)

    @pytest.mark.parametrize(
        ("width", "height", "refused"),
        [(1, 1, True), (31, 1000, True), (1000, 31, True), (32, 32, False), (32, 1000, False)],
    )
    def test_a_short_side_under_min_side_is_refused(
        self, width: int, height: int, refused: bool
    ) -> None:
        """An image whose short side is under min_side is refused with its size in the reason."""
        data = _encode(Image.new("RGB", (width, height), RED), "PNG")
        if refused:
            reason = f"image of {width}x{height} pixels is too small (short side under 32 pixels)"
            with pytest.raises(InvalidImageError) as caught:
                decode_image(data, 8, min_side=32)
            assert reason == str(caught.value)
        else:
            assert (8, 8, 3) == decode_image(data, 8, min_side=32).shape

    def test_min_side_is_off_by_default(self) -> None:
        """Without min_side a 1x1 image still decodes (training keeps what it was given)."""
        assert (8, 8, 3) == decode_image(_encode(Image.new("RGB", (1, 1), RED), "PNG"), 8).shape


@pytest.mark.parametrize(
    ("environment", "expected"), [(None, 64 * 2**20), ("16777216", 16 * 2**20)]
)
def test_large_images_are_allocated_in_blocks_that_go_back_to_the_system(
    environment: str | None, expected: int
) -> None:
    """Pillow's blocks are 64 MiB, above glibc's largest mmap threshold, unless the operator
    sets PILLOW_BLOCK_SIZE (checked in a fresh interpreter, where the import sets it)."""
    env = {k: v for k, v in os.environ.items() if k != "PILLOW_BLOCK_SIZE"}
    if environment is not None:
        env["PILLOW_BLOCK_SIZE"] = environment
    code = "import model.preprocess, PIL.Image; print(PIL.Image.core.get_block_size())"
    answer = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert expected == int(answer.stdout.strip())
    assert 64 * 2**20 == PILLOW_BLOCK_SIZE


class TestDecodedPixels:
    """decoded_pixels()."""

    def test_a_png_is_weighed_by_its_header(self) -> None:
        """A PNG weighs its declared width x height; its pixel data is never read."""
        assert 10_000 * 2_000 == decoded_pixels(_png_header_only(10_000, 2_000), 32)

    def test_a_jpeg_is_weighed_at_its_draft_scale(self) -> None:
        """A JPEG weighs the DCT scale its draft decodes (the smallest still twice the size)."""
        data = _encode(Image.new("RGB", (2_000, 1_000), RED), "JPEG")
        assert [250 * 125, 500 * 250, 2_000 * 1_000] == [
            decoded_pixels(data, size) for size in (60, 64, 2_000)
        ]

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"<!doctype html><html></html>", "not an image"),
            (_png_header_only(100_000, 100_000), "exceeds the limit"),
            (_encode(Image.new("RGB", (4, 4)), "TIFF"), "unsupported image format TIFF"),
            (_encode(Image.new("RGB", (1, 1)), "PNG"), "too small"),
        ],
    )
    def test_refuses_what_decode_image_refuses_before_decoding(
        self, data: bytes, reason: str
    ) -> None:
        """Bytes decode_image would refuse from the header raise the same InvalidImageError."""
        with pytest.raises(InvalidImageError, match=reason):
            decoded_pixels(data, 32, min_side=32)
