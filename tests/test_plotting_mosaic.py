"""image_mosaic lays images out on a grid with NaN gaps."""

import numpy as np
import pytest

from bigmodel_course.plotting import image_mosaic, mosaic_cmap


def test_mosaic_layout():
    imgs = np.arange(5 * 2 * 3, dtype=float).reshape(5, 2, 3)
    m = image_mosaic(imgs, per_row=2)
    assert m.shape == (3 * 3 - 1, 2 * 4 - 1)
    np.testing.assert_array_equal(m[0:2, 0:3], imgs[0])
    np.testing.assert_array_equal(m[0:2, 4:7], imgs[1])
    np.testing.assert_array_equal(m[6:8, 0:3], imgs[4])
    assert np.isnan(m[2]).all() and np.isnan(m[:, 3]).all() and np.isnan(m[6:8, 4:7]).all()
    assert np.isnan(m).sum() == m.size - imgs.size


def test_mosaic_rejects_bad_input_and_cmap_draws_nan_white():
    with pytest.raises(ValueError, match="per_row"):
        image_mosaic(np.zeros((2, 2, 2)), per_row=0)
    with pytest.raises(ValueError, match="non-empty"):
        image_mosaic(np.zeros((2, 2)), per_row=1)
    assert mosaic_cmap()(np.nan)[:3] == (1.0, 1.0, 1.0)
