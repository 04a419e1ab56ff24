import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyseg.data.transforms import color_jitter


def _dark_image(background: int, nucleus: int) -> np.ndarray:
    """A fluorescence-like picture: a near-black background with one dim square object."""
    img = np.full((48, 48, 3), background, np.uint8)
    img[16:32, 16:32] = nucleus
    return img


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10), st.integers(15, 50), st.integers(0, 2**32 - 1), st.floats(0.05, 0.5))
def test_jitter_keeps_dim_objects_above_a_dark_background(background, contrast, seed, strength):
    img = _dark_image(background, background + contrast)
    out = color_jitter(img, np.random.default_rng(seed), strength, "image").astype(int)
    assert (out[20, 20] > out[0, 0]).all()  # every channel: the object is still brighter than its surround
    assert out[0, 0].max() <= 2 * background + 2  # a gain, not an offset: black stays (nearly) black


def test_mid_grey_jitter_clips_dim_objects_the_image_mode_keeps():
    """Why the image mode exists: contrast about grey 128 plus an offset maps a dim object and the background to
    the same value (black) in some samples."""
    img = _dark_image(5, 30)
    lost = {mode: 0 for mode in ("image", "mid_grey")}
    for seed in range(200):
        for mode in lost:
            out = color_jitter(img, np.random.default_rng(seed), 0.3, mode)
            lost[mode] += bool((out[20, 20] == out[0, 0]).any())
    assert lost["image"] == 0 and lost["mid_grey"] >= 10


def test_jitter_zero_strength_is_identity_and_result_is_contiguous():
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert color_jitter(img, np.random.default_rng(0), 0, "image") is img
    for seed, mode in zip(range(10), ["image", "mid_grey"] * 5):
        out = color_jitter(img, np.random.default_rng(seed), 0.3, mode)
        assert out.shape == img.shape and out.dtype == np.uint8 and out.flags.c_contiguous
