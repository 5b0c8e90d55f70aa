"""Lists actorexec's sub-packages, which live in top-level folders mapped in pyproject.toml."""

from setuptools import find_packages, setup

ROOTS = {folder: f"actorexec.{folder}"
         for folder in ("protocol", "runtime", "actors", "entrypoints")}

# "actorexec" itself: a namespace package holding only __main__.py (entrypoints/toplevel/).
packages = ["actorexec"]
for folder, name in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages)
