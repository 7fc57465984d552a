"""Settings precedence (env > file > defaults) and one-line errors that echo no value."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import load_settings
from broker.errors import ConfigError


def test_defaults_put_the_database_in_the_home(tmp_path: Path) -> None:
    settings = load_settings({"GPUBROKER_HOME": str(tmp_path)})
    assert settings.home == tmp_path
    assert settings.database_url == f"sqlite:///{tmp_path / 'broker.db'}"
    assert settings.solver == "highs"


def test_env_beats_file_beats_default(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('solver = "cpsat"\nsolver_time_limit = 12\n')
    settings = load_settings({"GPUBROKER_HOME": str(tmp_path), "GPUBROKER_SOLVER_TIME_LIMIT": "5"})
    assert settings.solver == "cpsat"  # from the file
    assert settings.solver_time_limit == 5.0  # env wins over the file
    assert load_settings({"GPUBROKER_HOME": str(tmp_path)}).solver_time_limit == 12.0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GPUBROKER_SOLVER": "gurobi"}, "GPUBROKER_SOLVER: must be one of highs, cpsat"),
        ({"GPUBROKER_RAY_PORT": "s3cr3t-value"}, "GPUBROKER_RAY_PORT: must be an integer"),
        (
            {"GPUBROKER_MAX_PROVIDER_SHARE": "1.5"},
            "GPUBROKER_MAX_PROVIDER_SHARE: must be in (0, 1]",
        ),
    ],
)
def test_bad_env_values_name_the_variable_not_the_value(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"GPUBROKER_HOME": str(tmp_path), **env})
    assert str(info.value) == expected
    assert "s3cr3t" not in str(info.value)


def test_bad_file_names_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('solvr = "highs"\n')
    with pytest.raises(ConfigError, match=r"config.toml: unknown key 'solvr'"):
        load_settings({"GPUBROKER_HOME": str(tmp_path)})
    (tmp_path / "config.toml").write_text("solver = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({"GPUBROKER_HOME": str(tmp_path)})
