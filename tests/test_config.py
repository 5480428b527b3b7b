"""The config tree: precedence, strictness, suggestions, presets, per-iteration schedule."""

from __future__ import annotations

import pytest
import yaml

from selfplay.config import ConfigError, for_iteration
from selfplay.methods import load_config


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_precedence_defaults_yaml_set_flags(tmp_path):
    assert load_config().train.beta == 0.1
    path = write(tmp_path, "train:\n  beta: 0.3\n  lr: 1.0e-6\n")
    assert load_config(path).train.beta == 0.3
    assert load_config(path, ["train.beta=0.4"]).train.beta == 0.4
    cfg = load_config(path, ["train.beta=0.4"], {"train.beta": 0.5})
    assert cfg.train.beta == 0.5 and cfg.train.lr == 1e-6
    assert load_config(path, [], {"train.beta": None}).train.beta == 0.3  # None = flag not given


def test_yaml_string_numbers_and_int_to_float(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 5e-7\n  epochs: 2\n"))
    assert cfg.train.lr == 5e-7 and isinstance(cfg.train.epochs, float)


@pytest.mark.parametrize("sets, message", [
    (["train.betta=0.2"], "Did you mean 'train.beta'?"),
    (["trian.beta=0.2"], "Did you mean 'train.beta'?"),
    (["train.beta=high"], "train.beta': expected a number"),
    (["train.batch_size=2.5"], "expected an integer"),
    (["generate.backend=tgi"], "not one of 'hf', 'vllm'"),
    (["train.beta"], "key=value"),
    (["model.lora.enabled=maybe"], "expected true/false"),
    (["loop.schedule={train.lrr: [1]}"], "Did you mean 'train.lr'?"),
])
def test_bad_keys_and_types(sets, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        load_config(None, sets)


def test_unknown_key_in_yaml_names_it(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'generate.temprature'.*generate.temperature"):
        load_config(write(tmp_path, "generate:\n  temprature: 0.7\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_method_preset_sits_under_yaml(tmp_path):
    cfg = load_config(None, ["method=sppo"])
    assert (cfg.generate.n, cfg.train.beta, cfg.method, cfg.loop.disjoint_prompts) == (5, 1e-3, "sppo", True)
    cfg = load_config(write(tmp_path, "method: sppo\ngenerate:\n  n: 3\n"))
    assert cfg.generate.n == 3 and cfg.generate.temperature == 0.7


def test_schedule_per_iteration_last_value_repeats():
    cfg = load_config(None, ["loop.schedule={train.lr: [5e-7, 5e-7, 1e-7], train.beta: [0.1, 5.0]}"])
    assert [for_iteration(cfg, k).train.lr for k in range(4)] == [5e-7, 5e-7, 1e-7, 1e-7]
    assert [for_iteration(cfg, k).train.beta for k in range(3)] == [0.1, 5.0, 5.0]


def test_cli_config_show(cli, tmp_path):
    res = cli(["config", "show", "--set", "train.betta=0.2"])
    assert res.exit_code == 2 and "train.beta" in res.output and "Traceback" not in res.output
    res = cli(["config", "show", "-c", write(tmp_path, "train:\n  beta: 0.25\n"), "--set", "generate.n=4"])
    assert res.exit_code == 0
    shown = yaml.safe_load(res.stdout)
    assert shown["train"]["beta"] == 0.25 and shown["generate"]["n"] == 4


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = Path(__file__).parents[1] / "configs"
    # The experiments' recipes too (not the efficacy manifest beside them, nor accelerate's own files).
    paths = sorted(configs.glob("*.yaml")) + sorted(set((configs / "experiments").glob("*.yaml"))
                                                    - {configs / "experiments" / "experiments.yaml"})
    assert configs / "experiments" / "rise.yaml" in paths
    for path in paths:
        load_config(path)


def test_numeric_keys_are_checked_against_their_ranges_also_in_the_schedule():
    from selfplay.config import load_config
    from selfplay.errors import ConfigError

    for flags, message in [({"generate.top_p": 0.0}, "'generate.top_p' must be in (0, 1], got 0.0"),
                           ({"loop.iters": -1}, "'loop.iters' must be >= 0, got -1"),
                           ({"train.label_smoothing": 0.7}, "'train.label_smoothing' must be in [0, 0.5]")]:
        with pytest.raises(ConfigError) as e:
            load_config(flags=flags)
        assert message in str(e.value)
    assert load_config(flags={"loop.iters": 0, "generate.temperature": 0.0}).loop.iters == 0
    with pytest.raises(ConfigError, match=r"'train.lr' must be >= 0, got -1.0 \(loop.schedule, iteration 1\)"):
        load_config(sets=['loop.schedule={"train.lr": [1e-5, -1]}'])
