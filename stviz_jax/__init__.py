"""stviz_jax: spatiotemporal activation maximisation for video networks in JAX.

Feichtenhofer, Pinz, Wildes & Zisserman, "Deep Insights into Convolutional
Networks for Video Recognition", IJCV 2020.
"""

from stviz_jax import models, objective, regularizers
from stviz_jax.config import default_config
from stviz_jax.notebook import show
from stviz_jax.optimize import Visualizer, visualize
from stviz_jax.result import Result

__all__ = ["Result", "Visualizer", "default_config", "models", "objective",
           "regularizers", "show", "visualize"]
