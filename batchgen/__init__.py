"""batchgen: bulk image generation with Gemini 3 Pro Image, resumable and budgeted."""

from __future__ import annotations

__version__ = "0.1.0"
