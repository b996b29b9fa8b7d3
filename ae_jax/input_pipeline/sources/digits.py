"""scikit-learn's bundled 8x8 digits: real data with no network and no files."""

import numpy as np

from ae_jax.input_pipeline.splits import Split
from ae_jax.input_pipeline.splits import choose


def read_digits(data_config, wanted) -> dict[str, Split]:
  """scikit-learn's 1,797 bundled 8x8 handwritten digits (values 0-16): real, and offline."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  split = Split(images, digits.target.astype(np.int32), tuple(str(d) for d in range(10)))
  return choose({'train': split}, wanted, "scikit-learn's digits")
