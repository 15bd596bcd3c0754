"""A two-turn chat, streamed piece by piece, with any GGUF model.

    python3 examples/stream_chat.py [MODEL]      # MODEL: a path, smollm2 or gemma3
"""

import sys

from numallm.engine import Engine

model = sys.argv[1] if len(sys.argv) > 1 else None
messages = [{"role": "user", "content": "Name three planets."}]
with Engine(model, verbose=True) as e:
    for turn in range(2):
        reply = []
        for piece in e.chat(messages, stream=True, max_tokens=96, temperature=0.7, seed=42):
            print(piece, end="", flush=True)
            reply.append(piece)
        print(f"\n-- {e.stats.line()}\n")
        messages += [{"role": "assistant", "content": "".join(reply)},
                     {"role": "user", "content": "Which of them is the largest?"}]
