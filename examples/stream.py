"""Streams several prompts concurrently, each token printed as it arrives.

    python examples/stream.py "The Program" "Permission is hereby" --max-tokens 64

The same as ``actorexec generate`` (``actorexec/entrypoints/generate.py``
holds the code; this file stays so the old command keeps working). The
README's "Streaming with the reference engine" shows the engine API itself.
"""

import sys

from actorexec.entrypoints.cli import main

if __name__ == "__main__":
    main(["generate", *sys.argv[1:]])
