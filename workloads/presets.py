"""Named model shapes. GPT sizes follow GPT-2/GPT-3; Llama sizes carry the published
parameter count, since their gated MLP and (70B) grouped-query attention differ from the
plain GPT block the shape formula describes."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # ~1.05M parameters, byte vocabulary: trains in about a minute on two CPU cores.
    "gpt-tiny": {"layers": 4, "d_model": 144, "heads": 4, "vocab": 256, "seq_len": 64},
    "gpt-125m": {"layers": 12, "d_model": 768, "heads": 12, "vocab": 50257, "seq_len": 1024},
    "gpt-350m": {"layers": 24, "d_model": 1024, "heads": 16, "vocab": 50257, "seq_len": 1024},
    "gpt-1.3b": {"layers": 24, "d_model": 2048, "heads": 16, "vocab": 50257, "seq_len": 2048},
    "llama-7b": {
        "layers": 32,
        "d_model": 4096,
        "heads": 32,
        "vocab": 32000,
        "seq_len": 4096,
        "params": 6_738_415_616,
    },
    "llama-13b": {
        "layers": 40,
        "d_model": 5120,
        "heads": 40,
        "vocab": 32000,
        "seq_len": 4096,
        "params": 13_015_864_320,
    },
    "llama-70b": {
        "layers": 80,
        "d_model": 8192,
        "heads": 64,
        "vocab": 32000,
        "seq_len": 4096,
        "params": 68_976_648_192,
    },
}
