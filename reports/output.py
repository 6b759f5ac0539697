"""The one HTML + PDF writer: a self-contained HTML page, and WeasyPrint's
rendering of the same HTML as the PDF (so the two never differ)."""

from __future__ import annotations

from pathlib import Path

from weasyprint import HTML

__all__ = ["write_html_pdf", "write_pdf"]


def write_pdf(html_text: str, pdf_path: Path, *, base_url: Path) -> Path:
    HTML(string=html_text, base_url=str(base_url)).write_pdf(pdf_path)
    return pdf_path


def write_html_pdf(html_text: str, html_path: Path, *, pdf: bool = True) -> tuple[Path, Path | None]:
    """html_path, and the PDF beside it (same name, .pdf) unless `pdf` is off."""
    html_path.write_text(html_text)
    if not pdf:
        return html_path, None
    return html_path, write_pdf(html_text, html_path.with_suffix(".pdf"), base_url=html_path.parent)
