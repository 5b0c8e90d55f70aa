"""``python -m actorexec``: the ``actorexec`` command.

This folder is the top-level package ``actorexec`` itself (a namespace
package: no ``__init__.py``), mapped in pyproject.toml like the other
folders; it holds only this file.
"""

from actorexec.entrypoints.cli import main

if __name__ == "__main__":
    main()
