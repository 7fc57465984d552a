"""The bundled GPT behind ``POST /generate`` as a Ray Serve deployment.

A request ``{"prompt": str, "max_tokens": int}`` is answered ``{"text": str, "tokens": int}``
with the continuation's text and the number of tokens generated. Concurrent requests to one
replica are batched (``serve.batch``): each decode step runs one forward pass per group of
sequences of equal context length, so a batch of equal-length prompts costs one pass per
token. Every replica adds its answered requests and generated tokens to the meter actor,
which the driver reads to report the endpoint's traffic.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

from ray import serve

from workloads.gpt import GPTConfig, build_model, decode, encode

METER = "gpubroker-meter"
NAMESPACE = "gpubroker"
MAX_PROMPT_BYTES = 16_384
MAX_NEW_TOKENS = 2048
FRESH_SEED = 0


class Meter:
    """Counts of the endpoint's traffic (a Ray actor the replicas report to)."""

    def __init__(self) -> None:
        self.requests = 0
        self.tokens = 0
        self.errors = 0

    def add(self, requests: int, tokens: int, errors: int = 0) -> None:
        self.requests += requests
        self.tokens += tokens
        self.errors += errors

    def read(self) -> dict[str, int]:
        return {"requests": self.requests, "tokens": self.tokens, "errors": self.errors}


class BadRequest(ValueError):
    """A request the endpoint refuses (HTTP 400), with the reason it says."""


def parse_request(body: Any) -> tuple[list[int], int]:
    """The prompt's tokens and the number to generate, or ``BadRequest`` naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("body: must be a JSON object with prompt and max_tokens")
    prompt, count = body.get("prompt"), body.get("max_tokens", 16)
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("prompt: must be a non-empty string")
    tokens = encode(prompt)
    if len(tokens) > MAX_PROMPT_BYTES:
        raise BadRequest(f"prompt: must be at most {MAX_PROMPT_BYTES} bytes")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_NEW_TOKENS:
        raise BadRequest(f"max_tokens: must be an integer from 1 to {MAX_NEW_TOKENS}")
    return tokens, count


def generate(model: Any, seq_len: int, batch: list[tuple[list[int], int]]) -> list[list[int]]:
    """Greedy continuations of every prompt in ``batch``: the new tokens of each."""
    import torch

    contexts = [list(tokens) for tokens, _ in batch]
    outputs: list[list[int]] = [[] for _ in batch]
    with torch.inference_mode():
        for _ in range(max(count for _, count in batch)):
            groups: dict[int, list[int]] = defaultdict(list)
            for i, (_, count) in enumerate(batch):
                if len(outputs[i]) < count:
                    groups[min(len(contexts[i]), seq_len)].append(i)
            for width, members in groups.items():
                window = torch.tensor([contexts[i][-width:] for i in members], dtype=torch.long)
                logits, _ = model(window)
                for i, token in zip(members, logits[:, -1, :].argmax(dim=-1).tolist(), strict=True):
                    contexts[i].append(token)
                    outputs[i].append(token)
    return outputs


class GptServer:
    """One replica: the GPT's weights (fresh or from a checkpoint), answering in batches."""

    def __init__(
        self,
        model: dict[str, Any],
        checkpoint: str | None = None,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.01,
        threads: int | None = None,
    ) -> None:
        import ray
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.config = GPTConfig(**model)
        torch.manual_seed(FRESH_SEED)  # fresh weights are the same in every replica
        self.model = build_model(self.config)
        if checkpoint is not None:
            self.model.load_state_dict(_load_weights(checkpoint))
        self.model.eval()
        self.meter = ray.get_actor(METER, namespace=NAMESPACE)
        self.answer.set_max_batch_size(max_batch_size)
        self.answer.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def answer(self, batch: list[tuple[list[int], int]]) -> list[list[int]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, generate, self.model, self.config.seq_len, batch)

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        if request.url.path.rstrip("/") != "/generate":
            return JSONResponse({"error": "not found; POST /generate"}, status_code=404)
        if request.method != "POST":
            return JSONResponse({"error": "method not allowed; POST /generate"}, status_code=405)
        started = time.perf_counter()
        try:
            prompt, count = parse_request(await request.json())
        except (BadRequest, ValueError) as exc:
            self.meter.add.remote(0, 0, 1)
            message = str(exc) if isinstance(exc, BadRequest) else "body: must be JSON"
            return JSONResponse({"error": message}, status_code=400)
        tokens = await self.answer((prompt, count))
        self.meter.add.remote(1, len(tokens))
        return JSONResponse(
            {
                "text": decode(tokens),
                "tokens": len(tokens),
                "seconds": round(time.perf_counter() - started, 4),
            }
        )


# The Serve deployment of the class (a call rather than a decorator keeps the class's type).
gpt_deployment = serve.deployment(GptServer)


def _load_weights(uri: str) -> dict[str, Any]:
    """The model's state dict from a checkpoint folder (a path or a storage URI)."""
    import tempfile
    from pathlib import Path

    import torch

    from workloads import storage

    with tempfile.TemporaryDirectory(prefix="gpubroker-weights-") as folder:
        storage.download(uri, Path(folder))
        path = Path(folder) / storage.CHECKPOINT_FILE
        state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"]
