"""Package discovery by scan: every package under ``lightning_adapters/`` and, as ``lightning_adapters.tasks.<pack>``,
every pack folder under ``tasks/`` — so a new pack is one folder. (``[tool.setuptools.packages.find]`` alone cannot
do this: it names what it finds after the folder, i.e. ``tasks.<pack>``, and ``package-dir`` only maps names it gets.)
The rest of the configuration is in pyproject.toml."""

from setuptools import find_packages, setup

library = find_packages(include=["lightning_adapters", "lightning_adapters.*"],
                        exclude=["lightning_adapters.tasks", "lightning_adapters.tasks.*"])
packs = [f"lightning_adapters.{name}" for name in find_packages(include=["tasks", "tasks.*"])]
setup(packages=library + packs)
