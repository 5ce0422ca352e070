"""The paper's settings (§IV.A): full-width IFESNet with 3 IFEM stages, batch 1, Adam lr 1e-4,
β1 0.9, weight decay 5e-3, τ = 1, ξ = 1.7. Variants import this file and override a few fields."""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.half_precision = False  # bfloat16 network, float32 parameters, optimizer and loss

    config.model = model = ml_collections.ConfigDict()
    model.num_stages = 3                  # IFEM stages: 1..4 (paper's S1..S4, Table V)
    model.hierarchical_connection = False  # paper's HC (Fig. 10)
    model.interactive = True              # False: "w/o IFEM" (Fig. 9b, Tables III-IV)
    model.width_multiplier = 1.0          # scales every hidden channel count
    model.activation = "relu"             # after every hidden conv
    model.weight_activation = "sigmoid"   # sigmoid | linear | softmax for the 2 weight maps
    model.dtype = "float32"               # compute dtype (bfloat16 for mixed precision)
    model.param_dtype = "float32"
    model.remat = False                   # recompute activations in the backward pass (less memory)
    model.conv_backend = "auto"           # CPU: oneDNN convolutions where they build, else XLA's

    config.loss = loss = ml_collections.ConfigDict()
    loss.weight_ir = 1.0       # L_I (eq. 7)
    loss.weight_vis = 1.0      # L_V (eq. 7)
    loss.weight_fusion = 1.0   # L_F = 1 - SSIM (eq. 12)
    loss.weight_map = 1.0      # L_M (eq. 13)
    loss.recon = "mse"         # mse | mae (Table VI)
    loss.ssim_mode = "window"  # window (MEF-SSIM patch-wise) | global (eq. 9-10 literally)
    loss.window = "uniform"    # uniform | gaussian
    loss.window_size = 11
    loss.window_sigma = 1.5    # for the gaussian window
    loss.ssim_c = 0.03 ** 2    # (0.03 L)^2 with L = 1 for images in [0, 1]
    loss.eps = 1e-6            # variance floor for flat patches
    loss.xi = 1.7              # ξ of the expected image (eq. 10)
    loss.tau = 1.0             # τ of the weight-map constraint (eq. 13)
    loss.map_reduction = "pixel"  # L_M's mean over pixels of |τ − W1 − W2| | image: |τ − mean(W1 + W2)|
    # extra terms, metric name -> weight (negative to maximise), e.g. {"viff": -0.1}: any
    # differentiable metric of ifes_jax/metrics.py, or PROFILE:NAME (ifes_jax/metric_terms.py)
    loss.metric_terms = ml_collections.ConfigDict()

    config.optim = optim = ml_collections.ConfigDict()
    optim.learning_rate = 1e-4
    optim.b1 = 0.9
    optim.b2 = 0.999
    optim.weight_decay = 5e-3
    optim.weight_decay_mode = "l2"  # l2 (coupled, as a TF kernel regulariser) | decoupled (AdamW)
    optim.schedule = "constant"     # constant | warmup_constant | warmup_cosine
    optim.warmup_steps = 0
    optim.grad_clip_norm = 0.0      # > 0: clip by global norm

    config.data = data = ml_collections.ConfigDict()
    data.dir = placeholder(str)       # a pairs folder (ir/ + vis/ or any release layout, see
                                      # ifes_jax/data/layouts.py); unset: built-in synthetic pairs
    data.dirs = placeholder(str)      # or several, mixed: 'PATH:WEIGHT,PATH:WEIGHT'
    data.ir_subdir = placeholder(str)   # explicit infrared / visible subfolders of every folder
    data.vis_subdir = placeholder(str)  # (default: found by name)
    data.decode_workers = 4           # threads decoding images while a dataset is built
    data.train_list = placeholder(str)  # a file of pair names for the train split
    data.train_fraction = placeholder(float)  # or a seeded random fraction of the pairs
    data.split = "train"              # the split to train on
    data.split_seed = 0
    data.mismatch = "error"           # pairs whose IR/VIS sizes differ: error | skip | crop
    data.small_images = "pad"         # pairs smaller than the crop: pad (reflect) | skip
    data.cache_dir = "~/.cache/ifes_jax/tfds"  # where the tfds dataset of a folder is built
    data.cache_compression = "zstd"   # its records: zstd | none (larger on disk, faster reads)
    data.cache_tile = 256             # its records are tiles of this side: a crop reads its own
    data.synthetic_pairs = 64         # size of the synthetic training pool
    data.synthetic_size = 256         # its images are synthetic_size x synthetic_size
    data.crop_size = 128              # random same-position crops of both sources
    data.flips = True
    data.rotations = True             # random 90-degree rotations
    data.prefetch = 2                 # batches prepared ahead, on the device
    data.workers = 0                  # grain worker processes preparing batches (0: this one)
    data.read_threads = 2             # threads of each preparing crops (they share its GIL)
    data.val_dir = placeholder(str)   # a pairs folder for validation at every checkpoint
    data.val_split = "train"          # its split (e.g. "test" with the same train_list)
    data.val_train_list = placeholder(str)
    data.val_size = 256               # centre crops of this size are validated
    data.val_pairs = 16               # at most this many validation pairs

    config.train = train = ml_collections.ConfigDict()
    train.steps = 100_000
    train.batch_size = 1
    train.log_every = 100
    train.checkpoint_every = 5_000
    train.keep_checkpoints = 3
    train.sample_every = 5_000      # fused PNGs of the fixed sample pairs
    train.num_samples = 3
    train.sample_size = 192
    train.parallel = "shard_map"    # shard_map (jit over a 1-D mesh) | pmap
    train.nonfinite = "stop"        # a non-finite loss: stop (keeping the last checkpoint) | skip the update
    train.keep_best = 0             # > 0: also keep the n best checkpoints by validation loss
    return config
