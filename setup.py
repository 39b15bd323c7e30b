"""Installs `flatness` (library), `data_gen` (synthetic languages) and the experiment scripts.

    pip install -e .            # CPU; the core install has no TensorFlow
    pip install -e '.[test]'    # + pytest, TensorBoard's event reader, hmmlearn, nltk
    pip install -e '.[cuda12]'  # + the CUDA 12 build of jaxlib ('.[cuda]' is the same)
    pip install -e '.[cuda13]'  # + the CUDA 13 build
    pip install -e '.[tpu]'     # + libtpu, on a TPU VM
"""
import setuptools

setuptools.setup(
    name="flatness",
    version="0.1.0",
    description=("Same pre-training loss, better downstream: flatness and implicit "
                 "bias of language models, in JAX."),
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["flatness*", "data_gen*", "experiments*",
                                               "launch*", "benchmarks*"]),
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.12.8",   # partial restore of the params alone
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "numpy>=1.26",
        "scipy>=1.11",
        "matfree>=0.3",
        "tensorboardX>=2.6",
        "tensorflow-datasets>=4.9.7",
        "importlib_resources",   # tensorflow-datasets imports it without declaring it
        "array-record>=0.5",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "tensorboard>=2.15", "hmmlearn>=0.3",
                 "nltk>=3.8"],
        "cuda": ["jax[cuda12]"],
        "cuda12": ["jax[cuda12]"],
        "cuda13": ["jax[cuda13]"],
        "tpu": ["jax[tpu]"],
    },
)
