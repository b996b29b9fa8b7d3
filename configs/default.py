"""Every field of an ae_jax experiment, with the original PyTorch codebase's defaults.

The experiment files (ae.py, cae.py, vae.py, ...) import this and change a few fields.
Any field can be overridden on the command line, for example

  python -m ae_jax.main --config=configs/ae.py --workdir=runs/ae \
      --config.model.latent_dim=16 --config.num_epochs=20
"""

import ml_collections
from ml_collections import config_dict


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  # AE, CAE, VAE or ConvVAE (ae_jax/models/). Each model reads some of the fields below; one set
  # to other than its default on a model that does not read it is refused.
  config.model.name = 'AE'
  config.model.hidden_dim = 256  # AE, VAE: units of the hidden layers.
  config.model.latent_dim = 32  # AE, VAE, ConvVAE; the CAE's latent is H/4 x W/4 x features[-1].
  config.model.dropout_rate = 0.1  # AE.
  config.model.features = (32, 64, 128, 256)  # CAE, ConvVAE: channels of the four encoder convs.
  # CAE, ConvVAE: 'matmul' computes the convolutions as matmuls, which XLA runs fast on CPUs;
  # 'xla' uses flax's Conv / ConvTranspose (cuDNN on GPUs); 'auto' picks matmul on CPU, xla
  # elsewhere.
  config.model.conv = 'auto'
  # VAE, ConvVAE: the weight of the KL term (1: the VAE's ELBO; > 1: a beta-VAE).
  config.model.beta = 1.0
  # VAE, ConvVAE: p(x|z) of the pixels: 'bernoulli' (binary cross-entropy on logits, summed over
  # pixels) or 'gaussian' (unit variance: half the squared error, summed, plus its constant).
  config.model.likelihood = 'bernoulli'

  # Gaussian noise added to the inputs; std > 0 makes a denoising autoencoder (and without it
  # no noise is added, whatever the mean). The target is always the clean image.
  config.noise = ml_collections.ConfigDict()
  config.noise.mean = 0.0
  config.noise.std = 0.0

  config.data = ml_collections.ConfigDict()
  # Where the images come from (docs/data.md):
  #   'tfds'    the tensorflow-datasets image dataset `name` (mnist, fashion_mnist, cifar10, ...);
  #   'idx'     MNIST-format IDX files (train-images-idx3-ubyte[.gz] and friends) in `path`;
  #   'folder'  image files in `path`: flat, one subfolder per class, and/or train/ test/ ...;
  #   'arrays'  a .npy / .npz file `path` of images (and labels);
  #   'digits'  scikit-learn's 1,797 bundled 8x8 digits: no network, no files.
  config.data.source = 'tfds'
  config.data.name = 'mnist'
  config.data.path = config_dict.placeholder(str)
  config.data.data_dir = config_dict.placeholder(str)  # tfds data_dir.
  # tfds manual_dir: a folder with the dataset's raw files (MNIST: the four official IDX .gz
  # files), so that tfds needs no network.
  config.data.manual_dir = config_dict.placeholder(str)
  config.data.train_split = 'train'
  config.data.test_split = 'test'  # 'test': used where the data has it; '' for none.
  # Where the data has no validation split: this fraction of `train_split`, always the same images.
  config.data.validation_fraction = 0.2
  config.data.grayscale = False  # colour images to one channel
  config.data.image_size = config_dict.placeholder(int)  # resize every image to N x N
  # Train on some classes only (anomaly detection: scripts/anomaly.sh): the labels kept, or the
  # labels left out, by number or name, separated by commas ('0,1,2'; 'Sneaker': names where the
  # data has them, as tfds, class folders and an .npz with label_names do; IDX files only number
  # them). The train and validation splits keep only those classes; the test split keeps every
  # class, so that the held-out ones can be scored against the rest. At most one of the two is
  # set.
  config.data.classes = config_dict.placeholder(str)
  config.data.held_out_classes = config_dict.placeholder(str)
  # Where the training data lives: 'device' (a copy on every device, batches gathered there),
  # 'host' (batches gathered in host memory and sent over, for data too large for the devices),
  # 'disk' (a .npy, a folder of images or a tfds dataset read a call at a time, for data too
  # large for host memory), or 'auto': a .npy, a folder or a tfds dataset larger than a quarter
  # of host memory on disk, else on the devices when it takes at most a quarter of their memory,
  # else in host memory.
  config.data.placement = 'auto'

  config.batch_size = 128
  # Evaluation (validation every epoch, eval.sh, tsne.sh) batches: larger, as no gradients are kept.
  config.eval_batch_size = 1000
  config.num_epochs = 10
  config.optimizer = 'adam'  # adam, adamw or sgd.
  config.learning_rate = 1e-3
  config.loss = 'mse'  # AE, CAE: mse or bce, the reconstruction loss, averaged over pixels.
  # The dtype of activations and matmuls: float32, or bfloat16 (parameters, optimizer state and
  # losses stay float32), which accelerators run faster.
  config.dtype = 'float32'

  # 'jit': one program over a ('data',) mesh of all devices. 'pmap': the same train_step under
  # jax.pmap, with gradients, batch statistics and metrics averaged over the device axis.
  config.parallel = 'jit'
  # The most training steps one compiled call runs. Calls are sized to take about three seconds,
  # so that the progress bar moves and Ctrl-C is answered that often.
  config.steps_per_call = 100
  # Validation images shown in TensorBoard every epoch.
  config.num_summary_images = 8
  return config
