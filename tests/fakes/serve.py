"""Run a fake upstream as its own process: `python -m tests.fakes.serve openai PORT`."""

from __future__ import annotations

import asyncio
import sys

from tests.fakes.openai_upstream import FakeOpenAI


async def main(kind: str, port: int) -> None:
    if kind != "openai":
        raise SystemExit(f"unknown fake {kind!r}")
    fake = FakeOpenAI(record=False)
    await fake.start(port=port)
    print(f"ready {fake.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:  # the same event loop as the gateway, so direct and proxied paths compare fairly
        import uvloop

        uvloop.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))
    except ImportError:
        asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))
