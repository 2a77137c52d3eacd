"""Pixels deeper than 8 bits brought to 0..255 by their bit depth, never by their own maximum.

A 16-bit PNG stores 0..65535 and a DICOM with ``BitsStored`` 12 stores 0..4095: the value that
means white is fixed by the format, so the same picture saved in 8 and 16 bits must give the same
8-bit pixels (within one level of rounding). Scaling each image by its own maximum would stretch a
dark 16-bit photo to full brightness and change the model's answer; :func:`scale_to_uint8` divides
by ``2**bits - 1`` instead. Used by :func:`dermkit.data.images.decode_image_bytes` (every image a
model, ``predict``, ``evaluate`` and the server read), :mod:`dermkit.data.dicom` and the image
quality measures (:mod:`dermkit.data.quality`), so all of them see the same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["WIDE_GREY_MODES", "SIXTEEN_BIT_MAX", "scale_to_uint8", "wide_grey_to_l"]

# Pillow's modes for one channel of more than 8 bits held as integers: 16-bit PNG/TIFF open as
# I;16*, 16-bit PGM (already stretched by Pillow to 0..65535) and some TIFFs as I.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
SIXTEEN_BIT_MAX = 65535


def scale_to_uint8(array: np.ndarray, bits: int, signed: bool = False) -> np.ndarray:
    """``array`` of ``bits``-bit samples as uint8: ``round(v * 255 / (2**bits - 1))``.

    Signed samples (DICOM ``PixelRepresentation`` 1) are shifted by ``2**(bits - 1)`` first, so
    the most negative value is black. Values outside the range the bit depth allows (garbage in
    unused high bits) are clipped. 8-bit unsigned input comes back unchanged.
    """
    bits = int(bits)
    if not 1 <= bits <= 32:
        raise ValueError(f"bit depth {bits} is not between 1 and 32")
    if bits == 8 and not signed and array.dtype == np.uint8:
        return array
    top = float(2**bits - 1)
    values = array.astype(np.float64)
    if signed:
        values += 2 ** (bits - 1)
    np.clip(values, 0.0, top, out=values)
    return np.rint(values * (255.0 / top)).astype(np.uint8)


def wide_grey_to_l(image: Image.Image) -> Image.Image:
    """A wide grey image (a mode in :data:`WIDE_GREY_MODES`) as 8-bit "L", scaled as 16 bits.

    Pillow keeps no other record of the file's depth: I;16 images are 16-bit by definition, and
    Pillow reads 16-bit PGM and older 16-bit PNG as I within 0..65535. Values beyond 16 bits are
    clipped here; :func:`dermkit.data.images.decode_image_bytes` refuses such images before.
    """
    return Image.fromarray(scale_to_uint8(np.asarray(image), 16), "L")
