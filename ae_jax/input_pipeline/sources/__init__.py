"""Where images come from: each source reads the splits a config names into uint8 arrays."""

from ae_jax.input_pipeline.sources.arrays import read_arrays
from ae_jax.input_pipeline.sources.digits import read_digits
from ae_jax.input_pipeline.sources.folder import read_image_folder
from ae_jax.input_pipeline.sources.idx import read_idx_folder
from ae_jax.input_pipeline.sources.tfds import read_tfds

READERS = {'tfds': read_tfds, 'idx': read_idx_folder, 'folder': read_image_folder,
           'arrays': read_arrays, 'digits': read_digits}
