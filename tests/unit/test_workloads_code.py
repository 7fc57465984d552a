"""User code in specs: run/setup/train/workdir/envs/estimated_hours, checked before launch."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.errors import SpecError
from workloads import code
from workloads.estimate import Hardware, estimate_training
from workloads.spec import DEFAULT_CODE_HOURS, TrainingJob, parse_spec


def _error(data: dict) -> SpecError:  # type: ignore[type-arg]
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return info.value


def test_a_skypilot_task_parses_unchanged() -> None:
    spec = parse_spec(
        {
            "num_nodes": 2,
            "resources": {"accelerators": "H100:8", "use_spot": True},
            "setup": "pip install -r requirements.txt",
            "run": "torchrun train.py",
            "workdir": ".",
            "envs": {"EPOCHS": 3, "NAME": "x"},
        }
    )
    assert isinstance(spec, TrainingJob) and spec.is_code and spec.model is None
    assert spec.nodes == 2 and spec.gpus_per_node == 8 and spec.constraints.spot
    assert spec.envs == {"EPOCHS": "3", "NAME": "x"}  # numbers become strings, as SkyPilot does
    assert spec.name == "task"


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"run": "x", "train": "a:b"}, "train", "not both"),
        ({"setup": "x", "train": "a.b:c"}, "setup", "needs run"),
        ({"train": "a b"}, "train", "package.module:function"),
        ({"run": "x", "envs": {"1A": "x"}}, "envs.<key>", "environment variable"),
        ({"run": "x", "envs": {"A": [1]}}, "envs.A", "string or a number"),
        ({"model": "gpt-tiny", "steps": 3, "workdir": "."}, "workdir", "needs run or train"),
        ({"steps": 3}, "model", "is required"),
        ({"run": "x", "estimated_hours": 0}, "estimated_hours", "(0, 1000000]"),
        ({"run": "x", "estimated_hours": {"B999": 1}}, "estimated_hours.<key>", "GPU name"),
        ({"run": "x", "file_mounts": {}}, "file_mounts", "unknown key"),
    ],
)
def test_bad_code_fields_name_the_field(data: dict, field: str, words: str) -> None:  # type: ignore[type-arg]
    error = _error(data)
    assert error.field == field and words in error.message


def test_user_hours_drive_the_estimate() -> None:
    spec = parse_spec({"run": "x", "estimated_hours": {"2": 3.0, "H100": 1.5, "A100": 2.5}})
    assert isinstance(spec, TrainingJob)
    h100 = estimate_training(spec, Hardware(gpu="H100-80GB", gpus_per_node=8, nodes=1))
    assert h100.fits and h100.hours == 1.5
    two = estimate_training(spec, Hardware(gpu="L4", gpus_per_node=1, nodes=2))
    assert two.hours == 3.0
    unknown = estimate_training(spec, Hardware(gpu="L4", gpus_per_node=1, nodes=4))
    assert unknown.hours == 3.0  # no figure for it: the longest given, never a guess below
    default = parse_spec({"run": "x"})
    assert isinstance(default, TrainingJob)
    assert estimate_training(default, Hardware(gpu=None, gpus_per_node=0, nodes=1)).hours == (
        DEFAULT_CODE_HOURS
    )


def test_workdir_must_exist_and_stay_under_the_cap(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "data.bin").write_bytes(b"x" * 2000)
    (tmp_path / "src" / ".git").mkdir()
    (tmp_path / "src" / ".git" / "pack").write_bytes(b"x" * 10_000)  # not shipped, not counted
    assert code.resolve_workdir("src", 4000, base=tmp_path) == str((tmp_path / "src").resolve())
    with pytest.raises(SpecError, match="larger than"):
        code.resolve_workdir("src", 1000, base=tmp_path)
    with pytest.raises(SpecError, match="existing folder"):
        code.resolve_workdir("nope", 1000, base=tmp_path)


def test_train_targets_are_found_by_reading_not_running(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "loop.py").write_text("raise SystemExit('never run')\ndef train_fn(config): ...\n")
    code.check_train_target("pkg.loop:train_fn", str(tmp_path))
    code.check_train_target("workloads.train:gpt_worker", None)  # an installed module
    with pytest.raises(SpecError, match="defines no other"):
        code.check_train_target("pkg.loop:other", str(tmp_path))
    with pytest.raises(SpecError, match=r"module pkg\.missing is not in"):
        code.check_train_target("pkg.missing:train_fn", str(tmp_path))
    (package / "broken.py").write_text("def (:\n")
    with pytest.raises(SpecError, match="not valid Python"):
        code.check_train_target("pkg.broken:f", str(tmp_path))
