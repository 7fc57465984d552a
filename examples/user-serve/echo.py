"""A Ray Serve application of your own: answers POST / with the reversed text it was sent."""

from __future__ import annotations

import os

from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class Reverser:
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    async def __call__(self, request: Request) -> dict[str, str]:
        text = (await request.body()).decode("utf-8", errors="replace")
        return {"greeting": self.greeting, "reversed": text[::-1]}


app = Reverser.bind(os.environ.get("GREETING", "hello"))
