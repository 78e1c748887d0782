"""sdr_jax: Scalable Dynamic Routing (task-customised SSL pre-training) in JAX."""
import setuptools

# Versions pinned to the ones the test suite has been run with (Python 3.11, CPU).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",
    "array_record==0.8.6",
    "grain==0.2.18",
    "ml-collections==1.1.0",
    "clu==0.0.12",
    "numpy==2.4.6",
    "pillow==13.0.0",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
    "importlib_resources",  # TFDS needs it to look up its registered datasets.
]

setuptools.setup(
    name="sdr_jax",
    version="0.1.0",
    description="Scalable Dynamic Routing: task-customised self-supervised pre-training in JAX",
    packages=setuptools.find_packages(include=["sdr_jax", "sdr_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest==9.0.3", "pytest-xdist==3.8.0", "scikit-learn==1.9.1",
                 # tests/test_notebooks.py executes notebooks/ in a kernel
                 "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0"],
        "bench": ["scikit-learn==1.9.1"],
    },
)
