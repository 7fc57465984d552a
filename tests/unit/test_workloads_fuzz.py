"""Fuzzing the spec parser: 10,000 random and mutated documents across the tests below
(1,000 random + 1,000 mutated + 2,000 hostile YAML texts + 600 x 10 seeded mixes).

Every document either parses into a spec or raises ``SpecError``; nothing else escapes,
no parse takes 200 ms, and no error message repeats a planted secret value.
"""

from __future__ import annotations

import copy
import gc
import random
import time
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.errors import SpecError
from workloads.spec import InferenceJob, TrainingJob, parse_spec

SECRET = "ghp_Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe"
LIMIT_S = 0.2
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VALID: list[dict[str, Any]] = [
    {
        "kind": "training",
        "name": "fuzz",
        "model": {"preset": "llama-7b", "seq_len": 2048},
        "tokens": 10**9,
        "global_batch": 64,
        "precision": "bf16",
        "parallelism": "fsdp",
        "checkpoint_every": 100,
        "nodes": 2,
        "constraints": {"gpus": ["H100"], "regions": ["us-*"], "spot": True, "max_nodes": 4},
        "budget": 1000,
        "deadline": "2030-01-01T00:00:00Z",
    },
    {
        "name": "sky",
        "model": {"layers": 2, "d_model": 64, "heads": 2, "seq_len": 32},
        "steps": 10,
        "num_nodes": 2,
        "resources": {"accelerators": "A100:8", "use_spot": True, "cloud": "gcp"},
    },
    {
        "kind": "inference",
        "name": "serve",
        "model": {"preset": "llama-13b"},
        "request_rate": 5.0,
        "input_tokens": 1000,
        "output_tokens": 200,
        "slo": {"ttft_ms": 800, "tpot_ms": 40},
        "regions": {"us": 0.5, "europe-west4": 0.5},
        "min_replicas": 2,
    },
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["bf16", "ddp", "H100", "gpt-tiny", "training", "inference", SECRET]),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), children, max_size=3),
    ),
    max_leaves=6,
)
keys = st.sampled_from(
    [
        "name",
        "kind",
        "model",
        "steps",
        "tokens",
        "global_batch",
        "precision",
        "constraints",
        "nodes",
        "slo",
        "regions",
        "resources",
        "num_nodes",
        "preset",
        "layers",
        "gpus",
        "accelerators",
        "stpes",
        "unknown_key",
    ]
)


def dump(data: Any) -> str:
    """YAML text of ``data`` (libyaml's emitter when present: the fuzz loop is hot)."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=False)


def check(document: object) -> None:
    # CPU time of this thread with the collector paused: neither other processes on the
    # cores, nor the suite's server threads, nor a full collection of garbage that other
    # tests left on the heap may be charged to the parse.
    gc.disable()
    start = time.thread_time()
    try:
        result = parse_spec(document)
    except SpecError as exc:
        result = exc
    finally:
        elapsed = time.thread_time() - start
        gc.enable()
    if isinstance(result, SpecError):
        assert SECRET not in str(result)
        assert "\n" not in str(result)
    else:
        assert isinstance(result, TrainingJob | InferenceJob)
    assert elapsed < LIMIT_S, f"parse took {elapsed:.3f}s"


def _mutate(doc: dict[str, Any], path: list[Any], value: Any, action: str) -> Any:
    doc = copy.deepcopy(doc)
    target: Any = doc
    for key in path[:-1]:
        if isinstance(target, dict) and key in target and isinstance(target[key], dict):
            target = target[key]
    last = path[-1] if path else "name"
    if action == "set":
        target[last] = value
    elif action == "delete":
        target.pop(last, None)
    elif action == "rename" and last in target:
        target[str(last) + "x"] = target.pop(last)
    return doc


@settings(FUZZ, max_examples=1000)
@given(st.dictionaries(keys, values, max_size=6))
def test_random_documents(document: dict[str, Any]) -> None:
    check(document)


@settings(FUZZ, max_examples=1000)
@given(
    base=st.sampled_from(VALID),
    path=st.lists(st.one_of(keys, st.sampled_from(["seq_len", "ttft_ms", "spot"])), max_size=3),
    value=values,
    action=st.sampled_from(["set", "set", "delete", "rename"]),
    more=st.lists(st.tuples(keys, values), max_size=2),
)
def test_mutated_valid_documents(
    base: dict[str, Any],
    path: list[Any],
    value: Any,
    action: str,
    more: list[tuple[str, Any]],
) -> None:
    document = _mutate(base, path, value, action)
    for key, extra in more:
        document = _mutate(document, [key], extra, "set")
    check(document)


TAGS = [
    "!!python/object:os.system",
    "!!python/object/apply:subprocess.call",
    "!!python/name:builtins.eval",
    "!!python/tuple",
    "!!binary",
    "!!set",
    "!!omap",
    "!!timestamp",
    "!custom",
]


@settings(FUZZ, max_examples=2000)
@given(
    base=st.sampled_from(VALID),
    tag=st.sampled_from(TAGS),
    where=st.integers(min_value=0, max_value=40),
    depth=st.integers(min_value=1, max_value=12),
    fan=st.integers(min_value=2, max_value=12),
    noise=st.text(max_size=30),
    shape=st.sampled_from(["tag", "bomb", "noise", "cut", "deep"]),
)
def test_hostile_yaml_text(
    base: dict[str, Any], tag: str, where: int, depth: int, fan: int, noise: str, shape: str
) -> None:
    text = dump(base)
    lines = text.splitlines()
    index = where % len(lines)
    if shape == "tag":
        key, sep, rest = lines[index].partition(":")
        lines[index] = f"{key}{sep} {tag} {rest.strip() or 'x'}" if sep else f"{tag} {key}"
    elif shape == "bomb":
        lines = ["b0: &b0 [lol, lol, lol]"]
        for i in range(1, depth):
            lines.append(f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * fan)}]")
        lines += text.splitlines()
    elif shape == "noise":
        lines.insert(index, noise)
    elif shape == "cut":
        lines = [*lines[:index], lines[index][: len(lines[index]) // 2]]
    else:
        lines.append("deep: " + "[" * (depth * 10) + "]" * (depth * 10))
    check("\n".join(lines) + "\n")


SEEDED_EXAMPLES = 600
DOCS_PER_SEED = 10
JUNK: list[Any] = [
    None,
    True,
    -1,
    0,
    10**100,
    -(10**100),
    1e308,
    float("nan"),
    float("-inf"),
    "",
    "x" * 5000,
    SECRET,
    [SECRET],
    {"k": SECRET},
    b"\x00\xff",
    [[[[]]]],
    {1: 2},
]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice([*JUNK, rng.randint(-(10**9), 10**9), rng.random() * 1e6])
    if roll < 0.75:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {
        rng.choice(["name", "model", "steps", "x", "slo", 7]): _random_value(rng, depth + 1)
        for _ in range(rng.randint(0, 4))
    }


def _seeded_document(rng: random.Random) -> object:
    """One document: a mutated valid spec (as a dict or YAML text), random data, or a bomb."""
    base = copy.deepcopy(rng.choice(VALID))
    kind = rng.randrange(5)
    for _ in range(rng.randint(1, 3)):
        target = base
        while isinstance(target, dict) and target and rng.random() < 0.5:
            key = rng.choice(list(target))
            if not isinstance(target[key], dict):
                break
            target = target[key]
        if not isinstance(target, dict) or not target:
            continue
        key = rng.choice(list(target))
        move = rng.randrange(3)
        if move == 0:
            target[key] = _random_value(rng)
        elif move == 1:
            del target[key]
        else:
            target[f"{key}{rng.choice(['_', 's', 'X'])}"] = _random_value(rng)
    if kind == 0:
        return base
    if kind == 1:
        return _random_value(rng)
    text = (
        dump({k: v for k, v in base.items() if not isinstance(v, bytes | float)})
        if kind == 2
        else "name: x\nsteps: 3\n"
    )
    if kind == 3:
        return f"name: {rng.choice(TAGS)} {rng.choice(['x', '[1]', '{}', '12'])}\n" + text
    depth, fan = rng.randint(2, 12), rng.randint(2, 12)
    lines = ["z0: &z0 [a, b]"] + [
        f"z{i}: &z{i} [{', '.join([f'*z{i - 1}'] * fan)}]" for i in range(1, depth)
    ]
    return "\n".join(lines) + "\n" + text


@settings(FUZZ, max_examples=SEEDED_EXAMPLES)
@given(st.integers(min_value=0, max_value=2**32))
def test_seeded_mixed_documents(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(DOCS_PER_SEED):
        document = _seeded_document(rng)
        try:
            check(document)
        except yaml.YAMLError:
            raise AssertionError("a YAML error escaped parse_spec") from None


def test_the_valid_seeds_parse() -> None:
    for document in VALID:
        assert isinstance(parse_spec(document), TrainingJob | InferenceJob)
