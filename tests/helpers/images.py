"""Small images for manifests' references and for the folders tests build by hand."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def make_image(path: Path, size: tuple[int, int] = (32, 24), fmt: str = "PNG",
               colour: tuple[int, int, int] = (200, 40, 40)) -> Path:
    Image.new("RGB", size, colour).save(path, fmt)
    return path
