"""Lists actorexec's sub-packages, which live in top-level folders mapped in pyproject.toml,
and the one compiled module: the shared-memory ring's core (``runtime/transport/
_ringcore*.c``). It is optional: where it cannot be built (no C compiler) the install
goes on and the rings run their Python implementation (``shm_ring_compiled.py``)."""

from setuptools import Extension, find_packages, setup

ROOTS = {folder: f"actorexec.{folder}"
         for folder in ("protocol", "runtime", "actors", "entrypoints")}

# "actorexec" itself: a namespace package holding only __main__.py (entrypoints/toplevel/).
packages = ["actorexec"]
for folder, name in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

ring_core = Extension(
    "actorexec.runtime.transport._ringcore",
    sources=[f"runtime/transport/{name}.c"
             for name in ("_ringcore", "_ringcore_reader", "_ringcore_writer")],
    depends=["runtime/transport/_ringcore.h"],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                        "-Wno-unused-parameter", "-Wno-cast-function-type"],
    optional=True,
)

setup(packages=packages, ext_modules=[ring_core])
