"""Packaging for pylo. Tool settings (ruff, mypy, pytest) live in pyproject.toml."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
for line in (here / "pylo" / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        version["value"] = line.split("=", 1)[1].strip().strip('"')

setup(
    name="pylo",
    version=version["value"],
    description="Run a function over millions of inputs, keep a durable snapshot, resume after failures.",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["pylo", "pylo.*"]),
    package_data={"pylo": ["py.typed"]},
    entry_points={"console_scripts": ["pylo = pylo.cli:main"]},
    install_requires=[
        "sqlalchemy>=2.0",
        "tenacity>=9.2.1",  # older Retrying objects hold a threading.local and cannot reach process or Dask workers
        "tqdm>=4.60",
        # Process workers send functions that plain pickle cannot (lambdas, closures).
        "cloudpickle>=2.2",
    ],
    extras_require={
        "postgres": ["psycopg[binary]>=3.1"],
        "dask": ["dask[distributed]>=2024.1"],
        # Pipeline configuration in .yml/.yaml files (JSON and TOML need nothing).
        "yaml": ["pyyaml>=6"],
        # Pipeline runs traced with OpenTelemetry: one trace per run, a span per node.
        "otel": ["opentelemetry-api>=1.20"],
        # The pools benchmarks/floor.py measures pylo against (not needed by tests).
        "bench": ["joblib>=1.3", "mpire>=2.8"],
        "test": [
            "pytest>=7.4",
            "pytest-timeout>=2.2",
            # The suite runs on two worker processes (addopts: -n 2).
            "pytest-xdist>=3.5",
            "hypothesis>=6.80",
            "psutil>=5.9",
            "ruff>=0.5",
            "mypy>=1.8",
            # The suite also runs on PostgreSQL (tests/pg_server.py starts one).
            "psycopg[binary]>=3.1",
            # ...and on a real Dask LocalCluster.
            "dask[distributed]>=2024.1",
            # ...and reads YAML configuration files.
            "pyyaml>=6",
            # ...and collects pipeline traces with the SDK's in-memory exporter.
            "opentelemetry-api>=1.20",
            "opentelemetry-sdk>=1.20",
        ],
    },
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX",
        "Topic :: System :: Distributed Computing",
    ],
)
