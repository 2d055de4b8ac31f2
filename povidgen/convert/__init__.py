"""Converters between pair layouts: TRL vision preference (povidgen's own), LLaVA/POVID and
VLFeedback/Silkie; :func:`export` writes one from another and :func:`read_pairs` opens any.
The mapping is described in :mod:`povidgen.convert.formats` and ``docs/formats.md``."""

from povidgen.convert.command import (
    EXPORT_MARKER,
    ExportReport,
    detect_format,
    export,
    read_pairs,
)
from povidgen.convert.formats import (
    FORMATS,
    Format,
    from_llava,
    from_vlfeedback,
    image_extension,
    llava_record,
    to_llava,
    to_vlfeedback,
    vlfeedback_row,
)

__all__ = [
    "EXPORT_MARKER",
    "FORMATS",
    "ExportReport",
    "Format",
    "detect_format",
    "export",
    "from_llava",
    "from_vlfeedback",
    "image_extension",
    "llava_record",
    "read_pairs",
    "to_llava",
    "to_vlfeedback",
    "vlfeedback_row",
]
