"""Multi-extension files whose image extensions are the amplifiers of one detector.

A profile with ``extensions: amplifiers`` says each image extension of a raw
file is one amplifier's readout (data, prescan and overscan), as many
observatories write them (one HDU per amplifier, each with its own
``DATASEC``/``BIASSEC``/``GAIN``/``RDNOISE`` and its place on the detector in
``DETSEC``). ccdflow reads such a file as one raw frame: the extensions side
by side, in HDU order (:func:`ccdflow.ccdio.read_raw` with the inventory's
``extensions``), and describes each amplifier by its sections shifted into
that frame; the trimmed data go where ``DETSEC`` says (or packed in HDU order).
Everything downstream is the ordinary multi-amplifier path.

A file of several images that the profile does not describe is quarantined
(:func:`ccdflow.inventory.inventory_file`): never partly reduced.
"""

from __future__ import annotations

from astropy.io import fits

from .fitsheader import FrameReadError
from .sections import Section, parse_section


def joined_header(image_headers: list[fits.Header]) -> tuple[fits.Header, list[int]]:
    """The header of the joined frame (the first extension's, primary keywords
    merged, with the joined width) and each extension's column offset in it."""
    heights = {int(h.get("NAXIS2", 0)) for h in image_headers}
    if len(heights) != 1:
        raise FrameReadError(f"image extensions of different heights ({sorted(heights)}) cannot be amplifiers "
                             "of one detector read side by side")
    offsets, width = [], 0
    for header in image_headers:
        offsets.append(width)
        width += int(header.get("NAXIS1", 0))
    header = image_headers[0].copy()
    header["NAXIS"], header["NAXIS1"] = 2, width
    return header, offsets


def shifted(text: str, dx: int) -> str:
    s = parse_section(text)
    return Section(s.y0, s.y1, s.x0 + dx, s.x1 + dx).to_fits()


def output_sections(detsecs: list[str], data_shapes: list[tuple[int, int]]) -> list[str]:
    """``DETSEC`` of every amplifier as 0-origin sections of the trimmed frame.

    ``DETSEC`` counts unbinned detector pixels on many instruments: it is scaled
    to the binned data it holds. A flipped ``DETSEC`` (``[2048:1025,...]``) only
    says the readout direction, which the region does not need.
    """
    boxes = [parse_section(d) for d in detsecs]
    x_origin, y_origin = min(b.x0 for b in boxes), min(b.y0 for b in boxes)
    out = []
    for box, (ny, nx) in zip(boxes, data_shapes):
        sx, sy = (box.x1 - box.x0) / nx, (box.y1 - box.y0) / ny
        if sx < 1 or sy < 1 or sx != int(sx) or sy != int(sy):
            raise FrameReadError(f"DETSEC {box.to_fits()} does not hold a {nx}x{ny} data section")
        x0, y0 = int((box.x0 - x_origin) / sx), int((box.y0 - y_origin) / sy)
        out.append(Section(y0, y0 + ny, x0, x0 + nx).to_fits())
    return out
