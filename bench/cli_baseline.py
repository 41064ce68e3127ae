"""The straightforward way to do ``motio run``'s job by hand: asyncio + openai SDK.

What a user would write without motio: read the prompts, one task per prompt
behind a semaphore, stream each answer with the SDK's typed chunks, append a
JSON line per result. No resume, no progress, no error file handling.

    python bench/cli_baseline.py PROMPTS.jsonl OUT.jsonl BASE_URL MODEL CONCURRENCY MAX_TOKENS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from openai import AsyncOpenAI


async def one(
    client: AsyncOpenAI, sem: asyncio.Semaphore, row: dict, model: str, max_tokens: int, out
) -> None:
    try:
        await generate(client, sem, row, model, max_tokens, out)
    except Exception as exc:  # one prompt's failure is its result, as motio records it
        out.write(json.dumps({"id": row["id"], "output": None, "error": {"type": type(exc).__name__,
                                                                          "message": str(exc)}}) + "\n")


async def generate(
    client: AsyncOpenAI, sem: asyncio.Semaphore, row: dict, model: str, max_tokens: int, out
) -> None:
    async with sem:
        started = time.perf_counter()
        messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        stream = await client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=0,
            seed=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, usage, finish, ttfb = [], None, None, None
        async for chunk in stream:
            if ttfb is None:
                ttfb = (time.perf_counter() - started) * 1000
            if chunk.usage:
                usage = chunk.usage.model_dump()
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                finish = choice.finish_reason or finish
        if usage is None:  # a server without include_usage: one chunk per token
            usage = {"completion_tokens": len(parts)}
        out.write(
            json.dumps(
                {
                    "id": row["id"],
                    "output": "".join(parts),
                    "finish_reason": finish,
                    "usage": usage,
                    "ttfb_ms": ttfb,
                    "latency_ms": (time.perf_counter() - started) * 1000,
                    "model": model,
                    "error": None,
                }
            )
            + "\n"
        )
        out.flush()


async def main(
    prompts: str, output: str, base_url: str, model: str, concurrency: int, max_tokens: int
) -> None:
    with open(prompts) as f:  # noqa: ASYNC230 - read once before any task runs
        rows = [json.loads(line) for line in f if line.strip()]
    client = AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0)
    sem = asyncio.Semaphore(concurrency)
    with open(output, "w") as out:  # noqa: ASYNC230 - as a hand-written script would
        await asyncio.gather(*(one(client, sem, row, model, max_tokens, out) for row in rows))
    await client.close()


if __name__ == "__main__":
    p, o, url, model, conc, mt = sys.argv[1:7]
    asyncio.run(main(p, o, url, model, int(conc), int(mt)))
