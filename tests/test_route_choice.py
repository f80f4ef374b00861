"""The torch engine's CPU route chosen by timing the candidates on the model's own weights
(generation/route_timing.py), cached per model, CPU and version: injected timings, so the choice
never depends on this machine; one test runs the real timer for its shape only."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from firefly_core.generation import route_timing
from firefly_core.generation.cpu_route import CpuRoute
from firefly_core.generation.route_timing import describe_timings, measured_route


class Block(nn.Module):
    def __init__(self, width: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.up = nn.utils.skip_init(nn.Linear, width, width, bias=False, dtype=dtype)
        self.down = nn.utils.skip_init(nn.Linear, width, width, bias=False, dtype=dtype)


class Model(nn.Module):
    """Two blocks of two square linears: 4096 wide in bf16 is 64 MiB, the kernel's threshold."""

    def __init__(self, width: int = 4096, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(width, dtype) for _ in range(2)])
        with torch.no_grad():
            for p in self.parameters():
                p.normal_(0, 0.02)


@pytest.fixture(scope="module")
def big():
    return Model(4096)


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FIREFLY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FIREFLY_GEMV", raising=False)


def timings(**seconds: float):
    """A timer answering the given seconds per candidate ("decode_firefly" -> "decode:firefly"),
    recording what was asked."""
    asked: list[str] = []

    def timer(name: str) -> float:
        asked.append(name)
        return seconds[name.replace(":", "_")]

    timer.asked = asked
    return timer


def never(name: str) -> float:
    raise AssertionError(f"{name} timed, but the choice should have come from the cache or the rule")


@pytest.mark.parametrize(
    ("ours", "torch_s", "fp32", "half", "expected"),
    [
        (0.8, 1.0, 2.0, 1.0, CpuRoute(gemv=True, float32_prompts=False)),  # the AVX-512 BF16 case of issue 24
        (1.2, 1.0, 2.0, 1.0, CpuRoute(gemv=False, float32_prompts=False)),
        (0.8, 1.0, 0.3, 1.0, CpuRoute(gemv=True, float32_prompts=True)),  # slow half GEMM: fp32 prompts
    ],
)
def test_the_fastest_candidates_are_kept(big, ours, torch_s, fp32, half, expected):
    timer = timings(decode_firefly=ours, decode_pytorch=torch_s, prompt_fp32=fp32, prompt_half=half)
    route, seen = measured_route(big, kernels_ready=True, timer=timer)
    assert route == expected
    assert sorted(timer.asked) == ["decode:firefly", "decode:pytorch", "prompt:fp32", "prompt:half"]
    assert seen["decode:firefly"] == ours and seen["prompt:half"] == half


def test_the_choice_is_cached_and_read_back_without_timing(big):
    said: list[str] = []
    first = timings(decode_firefly=0.8, decode_pytorch=1.0, prompt_fp32=2.0, prompt_half=1.0)
    route, seen = measured_route(big, kernels_ready=True, timer=first, status=said.append)
    assert any("timing the CPU routes" in s for s in said)
    again, seen_again = measured_route(big, kernels_ready=True, timer=never, status=said.append)
    assert again == route and seen_again == seen
    from firefly_core import paths

    files = list((paths.cache_dir() / "cpu_routes").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["route"] == {"gemv": True, "float32_prompts": False}


def test_another_cpu_or_thread_count_is_timed_again(big, monkeypatch):
    measured_route(big, kernels_ready=True, timer=timings(decode_firefly=0.8, decode_pytorch=1.0,
                                                           prompt_fp32=2.0, prompt_half=1.0))
    monkeypatch.setattr(route_timing, "_cpu_name", lambda: "Another CPU")
    slower = timings(decode_firefly=1.5, decode_pytorch=1.0, prompt_fp32=2.0, prompt_half=1.0)
    route, _ = measured_route(big, kernels_ready=True, timer=slower)
    assert route.gemv is False and slower.asked
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    again = timings(decode_firefly=0.5, decode_pytorch=1.0, prompt_fp32=2.0, prompt_half=1.0)
    assert measured_route(big, kernels_ready=True, timer=again)[0].gemv is True and again.asked


def test_a_damaged_cache_file_is_timed_again(big):
    from firefly_core import paths

    measured_route(big, kernels_ready=True, timer=timings(decode_firefly=0.8, decode_pytorch=1.0,
                                                           prompt_fp32=2.0, prompt_half=1.0))
    (cached,) = (paths.cache_dir() / "cpu_routes").glob("*.json")
    cached.write_text('{"route": "garbage"')
    timer = timings(decode_firefly=1.5, decode_pytorch=1.0, prompt_fp32=2.0, prompt_half=1.0)
    assert measured_route(big, kernels_ready=True, timer=timer)[0] == CpuRoute(gemv=False, float32_prompts=False)
    assert timer.asked


def test_without_the_kernels_only_prompts_are_timed(big):
    timer = timings(prompt_fp32=0.5, prompt_half=1.0)
    route, seen = measured_route(big, kernels_ready=False, timer=timer)
    assert route == CpuRoute(gemv=False, float32_prompts=True) and set(seen) == {"prompt:fp32", "prompt:half"}


def test_forced_kernel_is_not_timed(big, monkeypatch):
    monkeypatch.setenv("FIREFLY_GEMV", "1")  # tests and benches force the same path on every machine
    timer = timings(prompt_fp32=2.0, prompt_half=1.0)
    route, _ = measured_route(big, kernels_ready=True, timer=timer)
    assert route.gemv is True and "decode:firefly" not in timer.asked


def test_small_models_keep_the_flag_rule():
    small = Model(256)
    route, seen = measured_route(small, kernels_ready=True, timer=never)
    assert seen == {} and route.gemv is False  # kernels_pay: too small to read weights from memory


def test_the_status_line_says_what_was_chosen_and_by_how_much():
    line = describe_timings(CpuRoute(gemv=True), {"decode:pytorch": 1.27, "decode:firefly": 1.0,
                                                  "prompt:half": 1.0, "prompt:fp32": 2.5})
    assert line == "CPU route measured: decode: firefly kernel (1.27x PyTorch) · prompts: half precision (2.50x fp32)"


def test_the_service_reports_the_measured_choice(big, monkeypatch):
    """prepare_cpu_route: the timed choice is written into the layers and said on the status line
    (kernels as if built: the compile is not this test's subject)."""
    from firefly_core.generation import gemv
    from firefly_core.models.service import prepare_cpu_route

    model = Model(4096)
    monkeypatch.setattr(gemv, "prepare_kernels", lambda **_kw: None)
    monkeypatch.setattr(route_timing, "_block_timer", lambda _m: timings(
        decode_firefly=0.8, decode_pytorch=1.0, prompt_fp32=2.0, prompt_half=1.0))
    said: list[str] = []
    assert prepare_cpu_route(model, status=said.append) is None
    assert model.firefly_cpu_route == CpuRoute(gemv=True, float32_prompts=False)
    assert type(model.layers[0].up).__name__ == "RoutedLinear" and model.layers[0].up.route.gemv
    assert "CPU route measured: decode: firefly kernel (1.25x PyTorch)" in said[-1]


def test_the_real_timer_times_each_prompt_candidate_on_the_block(big):
    timer = route_timing._block_timer(big)
    for name in ("prompt:half", "prompt:fp32"):
        seconds = timer(name)
        assert 0 < seconds < math.inf
