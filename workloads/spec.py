"""Job specs: what a user asks to train or serve, validated before anything else sees it.

Specs come from YAML (``yaml.safe_load`` semantics, behind size and expansion limits) or from
Python dicts. Every failure is a ``SpecError`` naming the field path and what is allowed;
input values are never echoed, so a secret pasted into the wrong field stays out of logs.
SkyPilot's shorthand (``resources: {accelerators: "H100:8", use_spot, cloud, region}`` and
``num_nodes``) is folded into our own fields before validation.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from broker.errors import SpecError
from workloads import gpus as gpu_table
from workloads.presets import PRESETS

MAX_DOCUMENT_BYTES = 1_000_000
MAX_NODES = 10_000
MAX_DEPTH = 32

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_IDENT = r"^[a-z][a-z0-9-]{0,31}$"
_SAFE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,23}$")
_CLASS_NAME = re.compile(r"^[a-z][a-z0-9-]{0,15}$")

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Positive = Annotated[int, Field(ge=1, le=10**15)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: Any) -> Any:
        """``steps: true`` is not 1 step: a number field takes numbers only."""
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            kinds = {annotation, *typing.get_args(annotation)}
            if bool not in kinds and kinds & {int, float}:
                raise ValueError("must be a number, not true or false")
        return value


# --- the model --------------------------------------------------------------------------


class ModelShape(_Model):
    """A decoder-only transformer's shape; ``preset`` fills whatever is not given."""

    preset: str | None = None
    layers: int = Field(ge=1, le=1024)
    d_model: int = Field(ge=1, le=131_072)
    heads: int = Field(ge=1, le=1024)
    vocab: int = Field(default=256, ge=2, le=4_000_000)
    seq_len: int = Field(ge=1, le=4_194_304)
    params: int | None = Field(default=None, ge=1, le=10**14)
    """A published parameter count used instead of the shape formula (gated MLPs, GQA)."""

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if isinstance(data, str):  # ``model: gpt-125m`` is short for ``{preset: gpt-125m}``
            data = {"preset": data}
        if not isinstance(data, Mapping) or data.get("preset") is None:
            return data
        name = data["preset"]
        if not isinstance(name, str) or name not in PRESETS:
            raise _Rejected("preset", "unknown preset; known: " + ", ".join(PRESETS))
        filled = dict(PRESETS[name])
        if any(key in data for key in ("layers", "d_model", "heads", "vocab")):
            filled.pop("params", None)  # the published count no longer describes the shape
        filled.update(data)
        return filled

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelShape:
        if self.d_model % self.heads:
            raise _Rejected("heads", "must divide d_model")
        return self

    def n_params(self) -> int:
        """Trainable parameters: the published count, else the GPT formula (tied head)."""
        if self.params is not None:
            return self.params
        d, layers = self.d_model, self.layers
        return layers * (12 * d * d + 13 * d) + (self.vocab + self.seq_len) * d + 2 * d

    def gpt_config(self) -> Any:
        """The ``workloads.gpt.GPTConfig`` that trains this shape."""
        from workloads.gpt import GPTConfig

        return GPTConfig(
            n_layer=self.layers,
            n_head=self.heads,
            d_model=self.d_model,
            seq_len=self.seq_len,
            vocab_size=self.vocab,
        )


class Constraints(_Model):
    """Where a job may run. Empty lists mean anywhere."""

    gpus: list[str] = Field(default_factory=list, max_length=64)
    min_gpu_memory_gib: float | None = Field(default=None, gt=0, le=100_000)
    providers: list[Annotated[str, Field(pattern=_IDENT)]] = Field(
        default_factory=list, max_length=32
    )
    regions: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9*?\[\]._-]{1,64}$")]] = Field(
        default_factory=list, max_length=256
    )
    spot: bool = False
    max_nodes: int | None = Field(default=None, ge=1, le=100_000)
    min_interconnect_gbps: float | None = Field(default=None, ge=0, le=1_000_000)

    @field_validator("gpus", mode="before")
    @classmethod
    def _canonical_gpus(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return value
        names: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str) or len(item) > 64:
                raise _Rejected(f"[{index}]", "must be a GPU name")
            resolved = gpu_table.resolve(item)
            if not resolved.known:
                raise _Rejected(
                    f"[{index}]",
                    "unknown GPU; known: " + ", ".join(gpu_table.canonical_names()),
                )
            if resolved.name not in names:
                names.append(resolved.name)
        return names


class Slo(_Model):
    ttft_ms: float = Field(gt=0, le=3_600_000)
    tpot_ms: float = Field(gt=0, le=3_600_000)


class RequestClass(_Model):
    """One size class of an endpoint's requests and its share of the request rate."""

    name: str
    share: float = Field(gt=0, le=1)
    input_tokens: int = Field(ge=1, le=10**7)
    output_tokens: int = Field(ge=1, le=10**7)

    @field_validator("name")
    @classmethod
    def _short_name(cls, value: str) -> str:
        if not _CLASS_NAME.match(value):
            raise ValueError("must be 1-16 characters: a-z, 0-9, '-', starting with a letter")
        return value


class _Job(_Model):
    name: Name = "task"
    constraints: Constraints = Field(default_factory=Constraints)
    priority: int = Field(default=0, ge=-1000, le=1000)
    team: Name = "default"
    budget: Decimal | None = Field(default=None, ge=0, le=Decimal(10**12), decimal_places=6)
    deadline: datetime | None = None

    @field_validator("deadline")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_TRAIN_TARGET = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
DEFAULT_CODE_HOURS = 1.0
"""What the planner assumes for user code without ``estimated_hours``."""


def _env_strings(value: Any) -> Any:
    """``envs:`` as strings under variable names (numbers are written as given)."""
    if not isinstance(value, Mapping):
        return value
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise _Rejected("<key>", "must be an environment variable name")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise _Rejected(key, "must be a string or a number")
        out[key] = str(item)
    return out


class TrainingJob(_Job):
    """The bundled GPT (``model`` + ``tokens``/``steps``) or the user's own code.

    User code is ``run:`` (a shell command on every node, after ``setup:``) or
    ``train:`` (``package.module:function``, a Ray Train loop with one worker per node);
    ``workdir:`` is shipped as its working directory, ``envs:`` set for it.
    """

    kind: Literal["training"] = "training"
    model: ModelShape | None = None
    run: str | None = Field(default=None, min_length=1, max_length=100_000)
    setup: str | None = Field(default=None, min_length=1, max_length=100_000)
    train: str | None = Field(default=None, pattern=_TRAIN_TARGET, max_length=256)
    workdir: str | None = Field(default=None, min_length=1, max_length=4096)
    envs: dict[str, str] = Field(default_factory=dict, max_length=256)
    storage: str | None = Field(default=None, min_length=1, max_length=2048)
    estimated_hours: float | dict[str, float] | None = None
    """Hours of user code: one figure, or per node count ("2") or GPU type ("H100")."""
    tokens: int | None = Field(default=None, ge=1, le=10**16)
    steps: int | None = Field(default=None, ge=1, le=10**12)
    global_batch: Positive = Field(default=32, le=10**9)
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    parallelism: Literal["ddp", "fsdp"] = "fsdp"
    checkpoint_every: int = Field(default=500, ge=1, le=10**12)
    data: str | None = Field(default=None, min_length=1, max_length=4096)
    nodes: int | None = Field(default=None, ge=1, le=100_000)
    gpus_per_node: int | None = Field(default=None, ge=1, le=64)
    max_failures: int = Field(default=3, ge=0, le=1000)
    learning_rate: float = Field(default=3e-4, gt=0, le=10)

    _envs = field_validator("envs", mode="before")(_env_strings)

    @field_validator("estimated_hours")
    @classmethod
    def _hours(cls, value: float | dict[str, float] | None) -> float | dict[str, float] | None:
        figures = value.values() if isinstance(value, dict) else [] if value is None else [value]
        if any(not (0 < hours <= 1e6) for hours in figures):
            raise ValueError("hours must be in (0, 1000000]")
        if isinstance(value, dict):
            for key in value:
                if not (key.isdigit() or gpu_table.resolve(key).known):
                    raise _Rejected("<key>", "must be a node count or a known GPU name")
        return value

    @model_validator(mode="after")
    def _length(self) -> TrainingJob:
        if self.run is not None and self.train is not None:
            raise _Rejected("train", "give run or train, not both")
        if self.is_code:
            if self.setup is not None and self.run is None:
                raise _Rejected("setup", "needs run")
        else:
            if self.model is None:
                raise _Rejected("model", "is required (or give run: or train: for your own code)")
            if self.tokens is None and self.steps is None:
                raise _Rejected("tokens", "give tokens or steps (one of them is required)")
            for field in ("setup", "workdir"):
                if getattr(self, field) is not None:
                    raise _Rejected(field, "needs run or train")
        if self.tokens is not None and self.steps is not None:
            raise _Rejected("steps", "give tokens or steps, not both")
        limit = self.constraints.max_nodes
        if limit is not None and self.nodes is not None and self.nodes > limit:
            raise _Rejected("nodes", "must not exceed constraints.max_nodes")
        return self

    @property
    def is_code(self) -> bool:
        """Whether this job runs the user's own code rather than the bundled GPT."""
        return self.run is not None or self.train is not None

    @property
    def is_estimated_by_user(self) -> bool:
        """Whether its hours come from ``estimated_hours`` rather than the model."""
        return self.estimated_hours is not None or self.model is None

    def given_hours(self, gpu: str | None, nodes: int) -> float:
        """Hours the user gave for ``nodes`` nodes of ``gpu`` (or the default)."""
        figure = self.estimated_hours
        if figure is None:
            return DEFAULT_CODE_HOURS
        if not isinstance(figure, dict):
            return figure
        by_gpu = {gpu_table.resolve(k).name: v for k, v in figure.items() if not k.isdigit()}
        if gpu is not None and gpu in by_gpu:
            return by_gpu[gpu]
        if str(nodes) in figure:
            return figure[str(nodes)]
        return max(figure.values())

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * (self.model.seq_len if self.model else 1)

    def total_tokens(self) -> int:
        if self.tokens is not None:
            return self.tokens
        assert self.steps is not None
        return self.steps * self.tokens_per_step

    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        assert self.tokens is not None
        return max(1, math.ceil(self.tokens / self.tokens_per_step))


_MODEL_FROM = r"^job:[1-9][0-9]{0,17}$"


class InferenceJob(_Job):
    """An endpoint: the bundled GPT (``model`` or a training job's checkpoint through
    ``model_from: job:<id>``) or the user's own Ray Serve application (``serve:``
    ``package.module:app`` with ``workdir:``), sized by ``model`` for the planner."""

    kind: Literal["inference"] = "inference"
    model: ModelShape | None = None
    model_from: str | None = Field(default=None, pattern=_MODEL_FROM, max_length=32)
    serve: str | None = Field(default=None, pattern=_TRAIN_TARGET, max_length=256)
    workdir: str | None = Field(default=None, min_length=1, max_length=4096)
    envs: dict[str, str] = Field(default_factory=dict, max_length=256)
    request_rate: float = Field(gt=0, le=10**7)
    input_tokens: int = Field(ge=1, le=10**7)
    output_tokens: int = Field(ge=1, le=10**7)
    slo: Slo
    regions: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")], float] = Field(
        default_factory=dict, max_length=256
    )
    min_replicas: int = Field(default=1, ge=1, le=100_000)
    gpus_per_replica: int | None = Field(default=None, ge=1, le=64)
    """GPUs each replica spans (tensor parallel); None lets the planner choose."""
    mix: list[RequestClass] = Field(default_factory=list, max_length=16)
    """Size classes of the requests; each class may be served by its own GPU type."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    max_batch_size: int = Field(default=8, ge=1, le=1024)
    """Concurrent requests one replica of the bundled GPT answers in one batch."""
    batch_wait_ms: float = Field(default=10.0, ge=0, le=10_000)

    _envs = field_validator("envs", mode="before")(_env_strings)

    @model_validator(mode="before")
    @classmethod
    def _sizes_from_mix(cls, data: Any) -> Any:
        """With a ``mix``, ``input_tokens`` and ``output_tokens`` are its share-weighted
        means: filled in when left out, refused when they say otherwise."""
        if not isinstance(data, Mapping) or data.get("mix") is None:
            return data
        items = data["mix"]
        if not isinstance(items, list):
            raise _Rejected("mix", "must be a list of (name, share, input_tokens, output_tokens)")
        if not items:
            return data
        classes = []
        for index, item in enumerate(items):
            try:
                classes.append(RequestClass.model_validate(item))
            except ValidationError as exc:
                first = exc.errors(include_url=False, include_input=False)[0]
                error = {**first, "loc": ("mix", index, *first["loc"])}
                path, message = _message(error, cls)
                raise _Rejected(path, message) from None
        data = dict(data)
        for field in ("input_tokens", "output_tokens"):
            mean = max(1, round(sum(c.share * getattr(c, field) for c in classes)))
            if data.setdefault(field, mean) != mean:
                raise _Rejected(field, f"must be left out or equal the mix's mean ({mean})")
        return data

    @field_validator("mix")
    @classmethod
    def _classes(cls, value: list[RequestClass]) -> list[RequestClass]:
        if value and abs(sum(c.share for c in value) - 1.0) > 1e-3:
            raise ValueError("shares must sum to 1")
        if len({c.name for c in value}) != len(value):
            raise ValueError("class names must be different")
        return value

    def request_classes(self) -> list[RequestClass]:
        """The mix, or one class of every request when the spec gives none."""
        if self.mix:
            return list(self.mix)
        whole = RequestClass(
            name="all",
            share=1.0,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
        )
        return [whole]

    @model_validator(mode="after")
    def _what_is_served(self) -> InferenceJob:
        if self.model is None and self.model_from is None:
            raise _Rejected("model", "is required (or give model_from: job:<id>)")
        if self.serve is not None and self.model_from is not None:
            raise _Rejected("model_from", "serves the bundled GPT; give serve or model_from")
        if self.serve is None:
            for name in ("workdir",):
                if getattr(self, name) is not None:
                    raise _Rejected(name, "needs serve")
        return self

    @property
    def source_job(self) -> int | None:
        """The training job whose checkpoint ``model_from`` names."""
        return int(self.model_from.removeprefix("job:")) if self.model_from else None

    @property
    def shape(self) -> ModelShape:
        """The served model's shape (filled from the training job on submit)."""
        if self.model is None:
            raise _Rejected("model", "is not known yet: model_from is resolved on submit")
        return self.model

    @field_validator("regions")
    @classmethod
    def _shares(cls, value: dict[str, float]) -> dict[str, float]:
        if any(not 0 < share <= 1 for share in value.values()):
            raise ValueError("each share must be in (0, 1]")
        if value and abs(sum(value.values()) - 1.0) > 1e-3:
            raise ValueError("shares must sum to 1")
        return value


JobSpec = TrainingJob | InferenceJob


# --- errors -----------------------------------------------------------------------------


class _Rejected(ValueError):
    """A validator's complaint about a sub-field; turned into a SpecError with its path."""

    def __init__(self, sub_field: str, message: str) -> None:
        super().__init__(message)
        self.sub_field = sub_field
        self.message = message


def _path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and _SAFE_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += ".<key>" if text else "<key>"
    return text


_MESSAGES: dict[str, str] = {
    "missing": "is required",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "datetime_type": "must be an ISO 8601 date and time",
    "datetime_parsing": "must be an ISO 8601 date and time",
    "datetime_from_date_parsing": "must be an ISO 8601 date and time",
    "decimal_type": "must be a number",
    "decimal_parsing": "must be a number",
    "decimal_max_places": "must have at most 6 decimal places",
    "decimal_max_digits": "is too large",
    "string_pattern_mismatch": "must be 1-63 characters: letters, digits, '.', '_', '-'",
    "string_too_long": "is too long",
    "string_too_short": "must not be empty",
}


def _message(error: Mapping[str, Any], root: type[BaseModel]) -> tuple[str, str]:
    """(field path, message) for one pydantic error, with no input value in it."""
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, _Rejected):
        sub = cause.sub_field
        path = _path(loc)
        if not path or sub.startswith("["):
            return path + sub, cause.message
        return f"{path}.{sub}", cause.message
    if kind == "extra_forbidden":
        return _path(loc), "unknown key" + _allowed_keys(loc, root)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = ctx.get("gt", ctx.get("ge", ctx.get("lt", ctx.get("le"))))
        words = {
            "greater_than": "must be > ",
            "greater_than_equal": "must be >= ",
            "less_than": "must be < ",
            "less_than_equal": "must be <= ",
        }
        return _path(loc), f"{words[kind]}{bound}"
    if kind == "literal_error":
        return _path(loc), "must be one of " + str(ctx.get("expected", ""))
    if kind in ("too_long", "too_short"):
        return _path(loc), "has too many items" if kind == "too_long" else "has too few items"
    if kind == "value_error" and cause is not None:
        return _path(loc), str(cause)
    if kind in ("model_type", "model_attributes_type") and loc == ("model",):
        return "model", "must be a preset name or a mapping (preset, layers, d_model, heads, ...)"
    if kind == "string_pattern_mismatch" and loc == ("train",):
        return "train", "must be package.module:function"
    if kind == "string_pattern_mismatch" and loc and loc[-1] != "name" and loc[-1] != "team":
        return _path(loc), "must be a short name: letters, digits, '.', '_', '-', '*'"
    return _path(loc), _MESSAGES.get(kind, "is not valid")


def _allowed_keys(loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    models: dict[str, type[BaseModel]] = {
        "model": ModelShape,
        "constraints": Constraints,
        "slo": Slo,
        "mix": RequestClass,
    }
    parent = loc[-2] if len(loc) >= 2 else None
    if isinstance(parent, int) and len(loc) >= 3:  # an item of a list: mix[0].key
        parent = loc[-3]
    model = models.get(parent) if isinstance(parent, str) else None
    if model is None and len(loc) == 1:
        return "; allowed: " + ", ".join(sorted(set(root.model_fields) | _SKY_KEYS))
    if model is None:
        return ""
    return "; allowed: " + ", ".join(model.model_fields)


# --- parsing ----------------------------------------------------------------------------


# libyaml's parser when present (an order of magnitude faster), with PyYAML's safe
# constructor either way: plain data only, every other tag refused. Aliases build shared
# objects, so an alias bomb stays small here and ``_check_size`` refuses it.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: str | bytes, source: str | None) -> Any:
    size = len(text.encode("utf-8", "replace") if isinstance(text, str) else text)
    if size > MAX_DOCUMENT_BYTES:
        raise SpecError("", f"document is larger than {MAX_DOCUMENT_BYTES} bytes", source=source)
    loader: Any = None
    try:
        loader = _SafeLoader(text)  # the reader rejects unprintable characters here
        return loader.get_single_data()
    except yaml.constructor.ConstructorError as exc:
        line = _line(exc)
        raise SpecError(
            "", f"YAML{line} uses a tag or key that is not plain data", source=source
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError("", f"not valid YAML{_line(exc)}", source=source) from None
    except Exception:  # PyYAML's constructors fail in many ways on malformed tagged scalars
        raise SpecError("", "not valid YAML", source=source) from None
    finally:
        if loader is not None:
            loader.dispose()


def _line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" (line {mark.line + 1})" if mark is not None else ""


def _check_size(data: Any, source: str | None) -> None:
    """Refuse deep, huge or self-referencing structures.

    Sizes are counted as if every alias were written out, but each shared object is
    measured once, so an alias bomb is refused in time proportional to its text.
    """
    memo: dict[int, tuple[int, int]] = {}
    active: set[int] = set()

    def measure(item: Any, depth: int) -> tuple[int, int]:
        """(expanded size, height) of ``item`` found at ``depth``."""
        if depth > MAX_DEPTH:
            raise SpecError("", f"document is nested deeper than {MAX_DEPTH}", source=source)
        if isinstance(item, str | bytes):
            if len(item) > 100_000:
                raise SpecError("", "document holds a string longer than 100000", source=source)
            return 1, 0
        if not isinstance(item, Mapping | list | tuple | set | frozenset):
            return 1, 0
        key = id(item)
        if key in active:
            raise SpecError("", f"document is nested deeper than {MAX_DEPTH}", source=source)
        if key not in memo:
            active.add(key)
            children = (
                [x for pair in item.items() for x in pair] if isinstance(item, Mapping) else item
            )
            size, height = 1, 0
            for child in children:
                child_size, child_height = measure(child, depth + 1)
                size += child_size
                height = max(height, child_height + 1)
                if size > MAX_NODES:
                    raise SpecError("", f"document has more than {MAX_NODES} values", source=source)
            active.discard(key)
            memo[key] = (size, height)
        size, height = memo[key]
        if depth + height > MAX_DEPTH:
            raise SpecError("", f"document is nested deeper than {MAX_DEPTH}", source=source)
        return size, height

    measure(data, 0)


_SKY_KEYS = {"resources", "num_nodes"}
_SKY_RESOURCE_KEYS = ("accelerators", "use_spot", "cloud", "region", "zone")


def _accelerators(value: Any) -> tuple[list[str], int | None]:
    """GPU names and the per-node count from ``"H100:8"``, ``{H100: 8}`` or a list of them."""
    items: list[tuple[Any, Any]] = []
    if isinstance(value, str):
        values: list[Any] = [value]
    elif isinstance(value, list):
        values = value
    elif isinstance(value, Mapping):
        values = []
        items = list(value.items())
    else:
        raise SpecError("resources.accelerators", 'must look like "H100:8" or {H100: 8}')
    for item in values:
        if not isinstance(item, str):
            raise SpecError("resources.accelerators", 'must look like "H100:8" or {H100: 8}')
        name, _, count = item.partition(":")
        items.append((name.strip(), count.strip() or 1))
    names: list[str] = []
    counts: set[int] = set()
    for name, count in items:
        if not isinstance(name, str):
            raise SpecError("resources.accelerators", "GPU names must be strings")
        try:
            number = float(count) if isinstance(count, int | float | str) else math.nan
        except ValueError:
            number = math.nan
        if isinstance(count, bool) or not number.is_integer() or not 1 <= number <= 64:
            raise SpecError("resources.accelerators", "the GPU count must be an integer 1-64")
        names.append(name)
        counts.add(int(number))
    if len(counts) > 1:
        raise SpecError("resources.accelerators", "all choices must have the same GPU count")
    return names, (counts.pop() if counts else None)


def _kind_of(data: Mapping[str, Any]) -> Any:
    """The spec's ``kind``, or the one its keys imply when it gives none."""
    kind = data.get("kind")
    if kind is None:
        inference_keys = ("request_rate", "slo", "input_tokens", "output_tokens", "mix")
        kind = "inference" if any(k in data for k in inference_keys) else "training"
    return kind


def _fold_skypilot(data: dict[str, Any]) -> dict[str, Any]:
    """Rewrite SkyPilot's ``resources`` and ``num_nodes`` into our own fields."""
    data = dict(data)
    if "num_nodes" in data:
        if "nodes" in data:
            raise SpecError("num_nodes", "given together with nodes; use one of them")
        data["nodes"] = data.pop("num_nodes")
    if "resources" not in data:
        return data
    resources = data.pop("resources")
    if not isinstance(resources, Mapping):
        raise SpecError("resources", "must be a mapping")
    unknown = [key for key in resources if key not in _SKY_RESOURCE_KEYS]
    if unknown:
        key = unknown[0]
        shown = key if isinstance(key, str) and _SAFE_KEY.match(key) else "<key>"
        raise SpecError(
            f"resources.{shown}", "unknown key; allowed: " + ", ".join(_SKY_RESOURCE_KEYS)
        )
    constraints = data.get("constraints", {})
    if not isinstance(constraints, Mapping):
        raise SpecError("constraints", "must be a mapping")
    constraints = dict(constraints)

    def put(field: str, value: Any, where: str) -> None:
        if field in constraints:
            raise SpecError(where, f"given together with constraints.{field}; use one of them")
        constraints[field] = value

    if "accelerators" in resources:
        names, count = _accelerators(resources["accelerators"])
        put("gpus", names, "resources.accelerators")
        if count is not None:
            field = "gpus_per_replica" if _kind_of(data) == "inference" else "gpus_per_node"
            if field in data:
                raise SpecError("resources.accelerators", f"given together with {field}")
            data[field] = count
    if "use_spot" in resources:
        put("spot", resources["use_spot"], "resources.use_spot")
    if "cloud" in resources:
        put("providers", [resources["cloud"]], "resources.cloud")
    for key in ("region", "zone"):
        if key in resources:
            put("regions", [resources[key]], f"resources.{key}")
    data["constraints"] = constraints
    return data


def parse_spec(data: object, source: str | None = None) -> JobSpec:
    """A validated spec from a mapping or YAML text; any problem is a ``SpecError``."""
    if isinstance(data, str | bytes):
        data = _load_yaml(data, source)
    _check_size(data, source)
    if not isinstance(data, Mapping):
        raise SpecError("", "a spec must be a mapping of keys to values", source=source)
    try:
        folded = _fold_skypilot(dict(data))
        kind = _kind_of(folded)
        root: type[TrainingJob | InferenceJob]
        if kind == "training":
            root = TrainingJob
        elif kind == "inference":
            root = InferenceJob
        else:
            raise SpecError("kind", "must be one of 'training', 'inference'")
        return root.model_validate(folded)
    except SpecError as exc:
        raise SpecError(exc.field, _strip_field(exc), source=source) from None
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        field, message = _message(errors[0], root)
        raise SpecError(field, message, source=source) from None
    except (RecursionError, TypeError, ValueError, OverflowError, ArithmeticError):
        raise SpecError("", "the spec's values are not plain data", source=source) from None


def _strip_field(exc: SpecError) -> str:
    prefix = f"{exc.field}: " if exc.field else ""
    return exc.message.removeprefix(prefix)


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a YAML spec file."""
    from broker.files import read_bounded

    file = Path(path)
    raw = read_bounded(file, MAX_DOCUMENT_BYTES, "spec file")
    return parse_spec(raw, source=str(file))


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """A JSON-safe dict that ``parse_spec`` turns back into an equal spec."""
    return spec.model_dump(mode="json", exclude_none=True)
