"""The synthetic shifts: each changes a photo, keeps its size and type, and does so the same way every time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.preprocessing import ImageSpec, decode_image
from training.shifts import SHIFTS, shifted_inputs

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures"
SPEC = ImageSpec(64, 64)


@pytest.mark.parametrize("shift", sorted(SHIFTS))
def test_a_shift_changes_the_pixels_reproducibly(shift: str) -> None:
    photo = FIXTURES / "dog.jpg"
    first, again = shifted_inputs([photo], SPEC, shift), shifted_inputs([photo], SPEC, shift)
    assert first.shape == (1, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    plain = decode_image(photo.read_bytes(), SPEC)
    assert np.abs(first[0].astype(int) - plain.astype(int)).mean() > 1.0, f"{shift} left the photo as it was"
