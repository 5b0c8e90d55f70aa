"""``python -m actorexec.entrypoints``: the ``actorexec`` command."""

from actorexec.entrypoints.cli import main

if __name__ == "__main__":
    main()
