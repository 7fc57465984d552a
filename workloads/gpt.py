"""A GPT in plain PyTorch: the transformer that calibration and training both run.

Causal self-attention through ``scaled_dot_product_attention``, pre-LayerNorm blocks,
learned token and position embeddings, a head tied to the token embedding, and a
byte-level tokenizer (256 symbols) that needs no download. Only the functions here import
torch, and only when called, so the rest of ``workloads`` stays importable without it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BYTE_VOCAB = 256


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    seq_len: int = 64
    vocab_size: int = BYTE_VOCAB
    dropout: float = 0.0

    @property
    def n_params(self) -> int:
        """Trainable parameters (the head is tied, so it adds nothing)."""
        d, layers = self.d_model, self.n_layer
        per_block = 12 * d * d + 13 * d  # qkv + proj + 2-layer MLP (4x) + 2 LayerNorms
        embeddings = self.vocab_size * d + self.seq_len * d
        return layers * per_block + embeddings + 2 * d  # + final LayerNorm

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N for the matmuls plus the attention scores."""
        non_embedding = self.n_params - self.vocab_size * self.d_model - self.seq_len * self.d_model
        matmul = 6 * (non_embedding + self.vocab_size * self.d_model)  # the tied head computes
        attention = 12 * self.n_layer * self.d_model * self.seq_len
        return float(matmul + attention)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_model(config: GPTConfig) -> torch.nn.Module:
    """A fresh GPT for ``config`` (imports torch)."""
    import torch
    from torch import nn
    from torch.nn import functional

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = config.d_model
            self.ln1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
            self.drop = nn.Dropout(config.dropout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, steps, d = x.shape
            heads = config.n_head
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
            q, k, v = (t.view(batch, steps, heads, d // heads).transpose(1, 2) for t in (q, k, v))
            attended = functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=config.dropout if self.training else 0.0
            )
            x = x + self.drop(self.proj(attended.transpose(1, 2).reshape(batch, steps, d)))
            return x + self.drop(self.mlp(self.ln2(x)))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if config.d_model % config.n_head:
                raise ValueError("d_model must be divisible by n_head")
            self.config = config
            self.tok = nn.Embedding(config.vocab_size, config.d_model)
            self.pos = nn.Embedding(config.seq_len, config.d_model)
            self.blocks = nn.ModuleList(Block() for _ in range(config.n_layer))
            self.ln_f = nn.LayerNorm(config.d_model)
            self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
            self.head.weight = self.tok.weight  # tied
            self.apply(self._init)
            for name, param in self.named_parameters():
                if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                    nn.init.normal_(param, 0.0, 0.02 / math.sqrt(2 * config.n_layer))

        @staticmethod
        def _init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 0.02)

        def forward(
            self, idx: torch.Tensor, targets: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, torch.Tensor | None]:
            steps = idx.shape[1]
            positions = torch.arange(steps, device=idx.device)
            x = self.tok(idx) + self.pos(positions)
            for block in self.blocks:
                x = block(x)
            logits = self.head(self.ln_f(x))
            loss = None
            if targets is not None:
                loss = functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
                )
            return logits, loss

    return GPT()


# --- data -------------------------------------------------------------------------------


def encode(text: str) -> list[int]:
    """Byte-level tokens: UTF-8 bytes, vocabulary of 256."""
    return list(text.encode("utf-8"))


def decode(tokens: list[int]) -> str:
    return bytes(tokens).decode("utf-8", errors="replace")


def sample_text() -> str:
    """The text bundled with the package, for demos and calibration."""
    return resources.files("workloads").joinpath("data/sample.txt").read_text(encoding="utf-8")


def load_text(path: str | Path | None) -> str:
    """The training text: a file's contents, or the bundled sample when ``path`` is None."""
    if path is None or str(path) in ("", "sample", "bundled"):
        return sample_text()
    return Path(path).read_text(encoding="utf-8")


def token_tensor(text: str) -> torch.Tensor:
    import torch

    return torch.tensor(encode(text), dtype=torch.long)


def random_batch(
    tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``seq_len`` tokens and their next-token targets."""
    import torch

    if tokens.numel() <= seq_len + 1:
        raise ValueError(f"text has {tokens.numel()} tokens; need more than {seq_len + 1}")
    starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch_size,), generator=generator)
    x = torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])
    y = torch.stack([tokens[s + 1 : s + 1 + seq_len] for s in starts.tolist()])
    return x, y
