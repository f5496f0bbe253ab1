"""The first-frame image of an image-to-video request (``input_reference``): decoded and checked by the API,
stored beside the job's MP4, fitted to the job's size by the worker.

Torch-free (Pillow only): the API process imports it. The API accepts PNG, JPEG and WebP, applies the EXIF
orientation (a phone photo comes out the way it was shot), converts to RGB (alpha composited over white) and stores
the result as PNG, so the worker reads one lossless format whatever was sent; :class:`~worker.spec.InputImage`
records the stored image's SHA-256 and size in the job's spec, and the worker refuses a file that does not match it.

At run time the worker center-crops the image to the job's aspect ratio and resizes it to the job's width and height
(:func:`fit_to_size`): the image is the video's first frame, so it is cropped, never stretched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings

from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from worker.registry import SpecError
from worker.spec import InputImage

#: The request field (OpenAI's video API calls the first-frame image ``input_reference``).
FIELD = "input_reference"
FORMATS = ("PNG", "JPEG", "WEBP")
#: Smallest side accepted: below this an image carries nothing for a first frame.
MIN_SIDE = 16
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.DOTALL)


def decode_data_url(value: object) -> bytes:
    """The bytes of a JSON request's ``input_reference``: a ``data:image/...;base64,...`` URL."""
    if not isinstance(value, str):
        raise SpecError(FIELD, "must be an image file (multipart) or a base64 data URL string (JSON)")
    match = _DATA_URL.match(value.strip())
    if match is None:
        raise SpecError(FIELD, "must be a data URL of the form data:image/png;base64,<data> (or image/jpeg, "
                               "image/webp); image URLs are not fetched")
    try:
        return base64.b64decode(match.group("data"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SpecError(FIELD, f"the data URL's base64 does not decode: {exc}") from None


def decode_input_image(data: bytes, max_bytes: int, max_pixels: int) -> tuple[bytes, InputImage]:
    """Check and normalise an uploaded first frame: the PNG to store and its :class:`InputImage`.

    Raises :class:`SpecError` (param ``input_reference``) for an empty, oversized, truncated or non-image file, a
    format other than PNG / JPEG / WebP, more than ``max_pixels`` pixels (checked from the header, before the pixels
    are decoded) or a side under :data:`MIN_SIDE`.
    """
    if not data:
        raise SpecError(FIELD, "the image is empty")
    if len(data) > max_bytes:
        raise SpecError(FIELD, f"the image must be at most {max_bytes} bytes, got {len(data)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                if fmt not in FORMATS:
                    raise SpecError(FIELD, f"must be a PNG, JPEG or WebP image, got {fmt or 'an unknown format'}")
                width, height = img.size
                if width * height > max_pixels:
                    raise SpecError(FIELD, f"the image must have at most {max_pixels} pixels, got {width}x{height}")
                img.load()
                rgb = _to_rgb(ImageOps.exif_transpose(img))
    except SpecError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SpecError(FIELD, f"not a readable PNG, JPEG or WebP image ({type(exc).__name__})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt pixel data
        raise SpecError(FIELD, f"the image could not be decoded: {exc}") from None
    if min(rgb.size) < MIN_SIDE:
        raise SpecError(FIELD, f"the image must be at least {MIN_SIDE} pixels on each side, got "
                               f"{rgb.width}x{rgb.height}")
    return encode_png(rgb, fmt.lower())


def encode_png(rgb: Image.Image, source_format: str = "png") -> tuple[bytes, InputImage]:
    """An RGB image as the stored PNG and its :class:`InputImage`."""
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    png = out.getvalue()
    return png, InputImage(sha256=hashlib.sha256(png).hexdigest(), width=rgb.width, height=rgb.height,
                           source_format=source_format)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def load_stored_image(data: bytes, expected: InputImage) -> Image.Image:
    """The stored PNG of a job, checked against the spec's hash (``ValueError`` naming ``input_reference``)."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.sha256:
        raise ValueError(f"{FIELD}: the stored image does not match the job's (sha256 {digest[:12]}..., "
                         f"expected {expected.sha256[:12]}...)")
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def fit_to_size(img: Image.Image, width: int, height: int) -> Image.Image:
    """Center-crop ``img`` to ``width / height``'s aspect ratio and resize it to that size (Lanczos)."""
    return ImageOps.fit(img, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def synthetic_image(width: int, height: int) -> Image.Image:
    """A deterministic RGB test card (gradients and a disc): the warm-up jobs' first frame for image-to-video."""
    x = Image.linear_gradient("L").resize((width, height))
    y = Image.linear_gradient("L").rotate(90).resize((width, height))
    disc = Image.new("L", (width, height), 0)
    r = min(width, height) // 4
    ImageDraw.Draw(disc).ellipse((width // 2 - r, height // 2 - r, width // 2 + r, height // 2 + r), fill=255)
    return Image.merge("RGB", (x, y, disc))
