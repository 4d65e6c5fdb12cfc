r"""Dataset statistics of the synthetic two-stream model: a_hat, top clips, classes.

  python -m stviz_jax.stats --config=configs/synthetic_stats.py --workdir=/tmp/syn_stats

Runtime: about 1 min on a 2-core CPU (1200 synthetic test clips, batches of
100, layers fusion and logits). Output: `stats.npz` (per unit a_hat, the 8
top clips with their class, feature-map location and a thumbnail, the
maximum activity per class) and `stats_summary.json`. Killed and rerun, it
continues from `stats_state.npz`.

Then normalise by the data and see the statistics in the gallery:

  python -m stviz_jax.main --config=configs/synthetic_two_stream.py \
      --config.objective.a_hat_from=/tmp/syn_stats/stats.npz --workdir=/tmp/syn

(`Result.a_hat_given` is then true; the gallery's unit pages show the top
clips and the 10 highest-activating classes.)

Variants: `:videos` reads a class-per-folder video collection instead
(`--config.dataset.root=DIR`, flow by OpenCV; see `stviz_jax.data.videos`);
`:quick` (a few clips; the tests).
"""

import importlib.util
import os

import ml_collections


def _base_config():
  """configs/synthetic_two_stream.py beside this file (configs/ is not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic_two_stream.py")
  spec = importlib.util.spec_from_file_location("synthetic_two_stream_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg=None):
  config = _base_config()
  config.stats = ml_collections.ConfigDict(dict(
      layers="fusion,logits",  # comma-separated taps, or "all".
      top_k=8,                 # clips kept per unit.
      batch_size=100,          # clips per forward pass (bounds memory).
      checkpoint_every=4,      # batches between (atomic) checkpoints of the running stats.
      log_every=4,             # batches between progress lines.
      thumbnails=True,         # crops of the top clips around their location.
  ))
  config.dataset = ml_collections.ConfigDict(dict(
      kind="synthetic",        # synthetic | videos.
      size=1200,               # synthetic: clips (label i mod 12).
      seed=4242,               # synthetic: never drawn in training (train uses train.seed).
      # videos (stviz_jax.data.videos.VideoFolder):
      root="",                 # one subfolder per class.
      clips_per_video=1,
      classes="",              # comma-separated class folders in label order; "" = sorted.
      split_file="",           # e.g. UCF101 testlist01.txt.
      flow="auto",             # auto (TV-L1 if opencv-contrib) | tvl1 | farneback.
      flow_bound=5.0,          # pixels/frame mapped onto the flow stream's value range.
      rgb_mean=(),             # 8-bit per-channel mean; () = from the stream's value range.
      rgb_scale=0.0,           # 0 = from the stream's value range.
      cache_dir="",            # "" = <root>/.stviz_cache.
  ))
  if arg == "quick":
    config.dataset.size = 48
    config.stats.batch_size = 16
    config.stats.top_k = 3
  elif arg == "videos":
    config.dataset.kind = "videos"
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; valid: quick, videos")
  return config
