"""Job specs: presets, SkyPilot shorthand, validation errors that name the field."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import pytest

from broker.errors import NotFound, SpecError
from workloads.presets import PRESETS
from workloads.spec import (
    InferenceJob,
    ModelShape,
    TrainingJob,
    load_spec,
    parse_spec,
    spec_to_dict,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SECRET = "sk_live_9f8e7d6c5b4a3f2e1d0cAKIA"


def training(**extra: object) -> dict[str, object]:
    return {"name": "t", "model": {"preset": "gpt-tiny"}, "steps": 10, **extra}


def error_of(data: object) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return info.value


def test_presets_have_the_advertised_sizes() -> None:
    sizes = {name: ModelShape(preset=name).n_params() for name in PRESETS}
    assert 0.8e6 < sizes["gpt-tiny"] < 1.3e6
    assert 120e6 < sizes["gpt-125m"] < 130e6
    assert 330e6 < sizes["gpt-350m"] < 370e6
    assert 1.2e9 < sizes["gpt-1.3b"] < 1.45e9
    assert 6.5e9 < sizes["llama-7b"] < 7.1e9
    assert 12.5e9 < sizes["llama-13b"] < 13.5e9
    assert 65e9 < sizes["llama-70b"] < 72e9
    # gpt-tiny is the transformer workloads.gpt trains: same parameter count.
    shape = ModelShape(preset="gpt-tiny")
    config = shape.gpt_config()
    assert config.n_params == shape.n_params()


def test_overriding_the_shape_drops_the_published_count() -> None:
    shape = ModelShape.model_validate({"preset": "llama-7b", "layers": 16})
    assert shape.params is None
    assert shape.n_params() < ModelShape(preset="llama-7b").n_params() * 0.6
    assert parse_spec({**training(), "model": "gpt-125m"}).model == ModelShape(preset="gpt-125m")
    longer = ModelShape.model_validate({"preset": "llama-7b", "seq_len": 8192})
    assert longer.n_params() == 6_738_415_616


def test_tokens_or_steps_and_their_conversion() -> None:
    job = parse_spec(training(global_batch=4))
    assert isinstance(job, TrainingJob)
    assert job.total_tokens() == 10 * 4 * 64
    by_tokens = parse_spec({**training(), "steps": None, "tokens": 1000, "global_batch": 4})
    assert isinstance(by_tokens, TrainingJob)
    assert by_tokens.total_steps() == 4  # ceil(1000 / 256)
    assert error_of({**training(), "tokens": 5}).field == "steps"
    assert error_of({"name": "t", "model": {"preset": "gpt-tiny"}}).field == "tokens"


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (training(stpes=3), "stpes", "unknown key"),
        (training(global_batch=-4), "global_batch", ">= 1"),
        (training(global_batch="many"), "global_batch", "integer"),
        (training(precision="bf17"), "precision", "'bf16'"),
        (training(parallelism="tp"), "parallelism", "'fsdp'"),
        ({**training(), "model": {"preset": "gpt-huge"}}, "model.preset", "gpt-tiny"),
        ({**training(), "model": {"preset": "gpt-tiny", "layrs": 2}}, "model.layrs", "layers"),
        ({**training(), "model": {"preset": "gpt-tiny", "heads": 5}}, "model.heads", "divide"),
        ({**training(), "model": {"layers": 2, "heads": 2}}, "model.d_model", "required"),
        (training(constraints={"gpus": ["H100", "Z9000"]}), "constraints.gpus[1]", "H100-80GB"),
        (training(constraints={"regions": ["us east"]}), "constraints.regions[0]", "short"),
        (training(deadline="next tuesday"), "deadline", "ISO 8601"),
        (training(budget=-1), "budget", ">= 0"),
        (training(nodes=0), "nodes", ">= 1"),
        (training(learning_rate=float("nan")), "learning_rate", "finite"),
        (training(kind="batch"), "kind", "training"),
        (training(nodes=4, constraints={"max_nodes": 2}), "nodes", "max_nodes"),
    ],
)
def test_errors_name_the_field_and_what_is_allowed(data: object, field: str, words: str) -> None:
    error = error_of(data)
    assert error.field == field
    assert words in error.message
    assert error.exit_code == 2
    assert "\n" not in error.message


def test_errors_never_echo_the_value() -> None:
    for data in (
        training(name=SECRET + "/x"),
        training(team={"token": SECRET}),
        training(data=[SECRET]),
        training(precision=SECRET),
        training(constraints={"gpus": [SECRET]}),
        training(constraints={"providers": [SECRET]}),
        training(global_batch=SECRET),
        training(resources={"accelerators": SECRET + ":x"}),
        {**training(), "model": {"preset": SECRET}},
    ):
        assert SECRET not in str(error_of(data))
    # Unknown keys are named only when they look like a key, not like a credential.
    assert SECRET not in str(error_of({**training(), SECRET: 1}))


def test_skypilot_shorthand_folds_into_our_fields() -> None:
    job = parse_spec(
        training(
            num_nodes=2,
            resources={
                "accelerators": "H100:8",
                "use_spot": True,
                "cloud": "aws",
                "region": "us-east-1",
            },
        )
    )
    assert isinstance(job, TrainingJob)
    assert job.nodes == 2 and job.gpus_per_node == 8
    assert job.constraints.gpus == ["H100-80GB"]
    assert job.constraints.spot is True
    assert job.constraints.providers == ["aws"]
    assert job.constraints.regions == ["us-east-1"]
    choices = parse_spec(training(resources={"accelerators": {"A100-80GB": 8, "H100": 8}}))
    assert choices.constraints.gpus == ["A100-80GB", "H100-80GB"]
    assert error_of(training(resources={"accelerators": "H100:0"})).field == (
        "resources.accelerators"
    )
    assert error_of(training(resources={"disk_size": 100})).field == "resources.disk_size"
    assert error_of(training(nodes=2, num_nodes=2)).field == "num_nodes"
    clash = training(resources={"use_spot": True}, constraints={"spot": False})
    assert error_of(clash).field == "resources.use_spot"


def test_inference_spec_and_region_shares() -> None:
    data = {
        "kind": "inference",
        "name": "serve",
        "model": {"preset": "llama-7b"},
        "request_rate": 10,
        "input_tokens": 512,
        "output_tokens": 128,
        "slo": {"ttft_ms": 500, "tpot_ms": 50},
        "regions": {"us": 0.7, "europe": 0.3},
    }
    job = parse_spec(data)
    assert isinstance(job, InferenceJob)
    assert job.regions == {"us": 0.7, "europe": 0.3}
    assert error_of({**data, "regions": {"us": 0.7}}).field == "regions"
    assert error_of({**data, "slo": {"ttft_ms": 500}}).field == "slo.tpot_ms"
    no_kind = {k: v for k, v in data.items() if k != "kind"}
    assert isinstance(parse_spec(no_kind), InferenceJob)
    assert error_of({**data, "steps": 4}).field == "steps"


def test_yaml_text_dates_and_round_trip() -> None:
    job = parse_spec(
        "name: t\nmodel: {preset: gpt-tiny}\nsteps: 5\ndeadline: 2030-01-02T03:04:05\n"
        "budget: 12.5\nconstraints: {gpus: [a100, H100], spot: true}\n"
    )
    assert isinstance(job, TrainingJob)
    assert job.deadline is not None and job.deadline.tzinfo == UTC
    assert job.constraints.gpus == ["A100-40GB", "H100-80GB"]
    data = spec_to_dict(job)
    assert parse_spec(data) == job
    import json

    assert parse_spec(json.loads(json.dumps(data))) == job


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name: [unclosed\n", "not valid YAML"),
        ("!!python/object/apply:os.system ['true']\n", "tag"),
        ("name: !!python/name:os.system\n", "tag"),
        ("- just\n- a list\n", "mapping"),
        ("a: &a [*a]\n", "nested deeper"),
        ("? [a, b]\n: 1\n", "tag or key"),
    ],
)
def test_hostile_yaml_is_a_spec_error(text: str, words: str) -> None:
    assert words in error_of(text).message


def test_alias_bomb_and_huge_documents_fail_fast() -> None:
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    bomb = "\n".join(lines) + "\n"
    start = time.perf_counter()
    assert "values" in error_of(bomb).message
    few_aliases = "a: &a [" + ", ".join(["x"] * 400) + "]\n" + "b: [" + ", ".join(["*a"] * 60) + "]"
    assert "values" in error_of(few_aliases).message
    assert "larger than" in error_of("a: " + "x" * 1_100_000).message
    assert time.perf_counter() - start < 1.0


def test_examples_are_valid(tmp_path: Path) -> None:
    scenarios = {"month.yaml"}  # fleet simulations, not job specs
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name not in scenarios)
    assert names == [
        "gpt-125m-pretrain.yaml",
        "gpt-tiny-local.yaml",
        "gpt-tiny-serve.yaml",
        "hello-ranks.yaml",
        "llama-70b-pretrain.yaml",
        "llama-7b-finetune.yaml",
        "llama-7b-serve.yaml",
        "user-serve.yaml",
        "user-train.yaml",
    ]
    hello = load_spec(EXAMPLES / "hello-ranks.yaml")  # a SkyPilot task, unchanged
    assert isinstance(hello, TrainingJob) and hello.is_code and hello.nodes == 2
    assert hello.run is not None and "$SKYPILOT_NODE_RANK" in hello.run
    own = load_spec(EXAMPLES / "user-train.yaml")
    assert isinstance(own, TrainingJob) and own.train == "loop:train_fn"
    tiny = load_spec(EXAMPLES / "gpt-tiny-local.yaml")
    assert isinstance(tiny, TrainingJob)
    assert tiny.nodes == 2 and tiny.constraints.providers == ["local"]
    assert tiny.model is not None and tiny.model.preset == "gpt-tiny"
    assert tiny.precision == "fp32"
    assert tiny.total_steps() >= 3 * tiny.checkpoint_every
    assert isinstance(load_spec(EXAMPLES / "llama-7b-serve.yaml"), InferenceJob)
    served = load_spec(EXAMPLES / "gpt-tiny-serve.yaml")
    assert isinstance(served, InferenceJob) and served.constraints.providers == ["local"]
    user_app = load_spec(EXAMPLES / "user-serve.yaml")
    assert isinstance(user_app, InferenceJob) and user_app.serve == "echo:app"
    big = load_spec(EXAMPLES / "llama-70b-pretrain.yaml")
    assert isinstance(big, TrainingJob) and big.constraints.min_interconnect_gbps
    with pytest.raises(NotFound):
        load_spec(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: t\nmodel: {preset: gpt-tiny}\nsteps: 5\nglobal_batch: -2\n")
    with pytest.raises(SpecError) as info:
        load_spec(broken)
    assert str(info.value).startswith(f"{broken}: global_batch:")
