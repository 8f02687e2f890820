"""Reading PDFs back in tests: pages, text, page size, images, attachments, and a PNG preview."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

from pypdf import PdfReader

# Page sizes in PDF points (1/72 inch).
A4 = (595.28, 841.89)
LETTER = (612.0, 792.0)


def reader(data: bytes) -> PdfReader:
    return PdfReader(io.BytesIO(data))


def page_count(data: bytes) -> int:
    return len(reader(data).pages)


def text(data: bytes) -> str:
    """All pages' text, whitespace runs collapsed to single spaces."""
    return " ".join(" ".join((page.extract_text() or "").split()) for page in reader(data).pages)


def compact_text(data: bytes) -> str:
    """All pages' text with every whitespace removed (for strings the layout may wrap)."""
    return "".join(text(data).split())


def page_size(data: bytes, index: int = 0) -> tuple[float, float]:
    """Width and height of a page's media box, in points, rounded to 0.01."""
    box = reader(data).pages[index].mediabox
    return round(float(box.width), 2), round(float(box.height), 2)


def image_count(data: bytes) -> int:
    return sum(len(page.images) for page in reader(data).pages)


def embedded_files(data: bytes) -> list[bytes]:
    """The contents of every embedded file: document attachments and file-attachment annotations."""
    pdf = reader(data)
    found = [content for contents in pdf.attachments.values() for content in contents]
    for page in pdf.pages:
        for annotation in page.get("/Annots") or []:
            annotation = annotation.get_object()
            if annotation.get("/Subtype") == "/FileAttachment":
                found.append(annotation["/FS"].get_object()["/EF"]["/F"].get_object().get_data())
    return found


def to_png(data: bytes, directory: Path, *, dpi: int = 80) -> Path | None:
    """The first page as a PNG (via poppler's pdftoppm), or None where pdftoppm is not installed."""
    if shutil.which("pdftoppm") is None:
        return None
    pdf = directory / "document.pdf"
    pdf.write_bytes(data)
    subprocess.run(
        ["pdftoppm", "-png", "-r", str(dpi), "-f", "1", "-l", "1", "-singlefile", str(pdf), str(directory / "page")],
        check=True,
        timeout=60,
    )
    return directory / "page.png"
