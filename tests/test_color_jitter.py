import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tinyseg.data.transforms import color_jitter, is_grey


def _dark_image(background: int, nucleus: int) -> np.ndarray:
    """A fluorescence-like picture: a near-black background with one dim square object."""
    img = np.full((48, 48, 3), background, np.uint8)
    img[16:32, 16:32] = nucleus
    return img


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10), st.integers(15, 50), st.integers(0, 2**32 - 1), st.floats(0.05, 0.5))
@example(background=0, contrast=41, seed=47079, strength=0.5)  # lower contrast lifts black towards the mean
def test_jitter_keeps_dim_objects_above_a_dark_background(background, contrast, seed, strength):
    img = _dark_image(background, background + contrast)
    out = color_jitter(img, np.random.default_rng(seed), strength, "image", False).astype(int)
    assert (out[20, 20] > out[0, 0]).all()  # every channel: the object is still brighter than its surround
    # Gains, not an offset: the background moves only towards the image's mean (contrast) and by the gains,
    # where an offset would lift black by up to a fifth of the range.
    mean = img.mean()
    assert out[0, 0].max() <= (background + strength * (mean - background)) * (1 + strength) * (1 + strength / 2) + 1


def test_mid_grey_jitter_clips_dim_objects_the_image_mode_keeps():
    """Why the image mode exists: contrast about grey 128 plus an offset maps a dim object and the background to
    the same value (black) in some samples."""
    img = _dark_image(5, 30)
    lost = {mode: 0 for mode in ("image", "mid_grey")}
    for seed in range(200):
        for mode in lost:
            out = color_jitter(img, np.random.default_rng(seed), 0.3, mode, False)
            lost[mode] += bool((out[20, 20] == out[0, 0]).any())
    assert lost["image"] == 0 and lost["mid_grey"] >= 10


def test_jitter_zero_strength_is_identity_and_result_is_contiguous():
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert color_jitter(img, np.random.default_rng(0), 0, "image", False) is img
    for seed, mode in zip(range(10), ["image", "mid_grey"] * 5):
        out = color_jitter(img, np.random.default_rng(seed), 0.3, mode, False)
        assert out.shape == img.shape and out.dtype == np.uint8 and out.flags.c_contiguous


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.05, 1.0), st.sampled_from(["image", "mid_grey"]))
def test_keep_grey_never_tints_a_grey_image_and_leaves_colour_ones_alone(seed, strength, mode):
    rng = np.random.default_rng(seed)
    grey = np.repeat(rng.integers(0, 256, (24, 32, 1), dtype=np.uint8), 3, axis=2)
    out = color_jitter(grey, np.random.default_rng(seed), strength, mode, True)
    assert (out == out[:, :, :1]).all()
    colour = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    kept = color_jitter(colour, np.random.default_rng(seed), strength, mode, True)
    assert np.array_equal(kept, color_jitter(colour, np.random.default_rng(seed), strength, mode, False))


def test_without_keep_grey_a_grey_image_is_tinted():
    """What keep_grey prevents: one table per channel gives a grey image colours it never has at inference."""
    grey = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    tinted = sum(not is_grey(color_jitter(grey, np.random.default_rng(s), 0.3, "mid_grey", False)) for s in range(50))
    assert tinted >= 45
