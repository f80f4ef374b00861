"""The CPU matrix route: chosen once when a model is prepared, written into its layers.

Oracles: PyTorch's own `F.linear` in float32 (the fp32-prompt route must be exactly that, cast back),
PyTorch's bf16 `F.linear` for rows the route leaves alone, and the unrouted model's logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from firefly_core.generation import GenerationConfig, ModelDecoder, generate_ids
from firefly_core.generation import cpu_route
from firefly_core.generation.cpu_route import MIN_ROWS, CpuRoute, RoutedLinear, apply_route, choose_route, route_of
from firefly_core.models.loading import load_model


def _layer(dtype=torch.bfloat16, bias=True):
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(32, 64, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(64, 32, generator=g))
        if bias:
            layer.bias.copy_(torch.randn(64, generator=g))
    return layer.to(dtype)


def test_float32_prompts_route_multiplies_big_inputs_in_float32_and_leaves_one_row_alone():
    layer = _layer()
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    apply_route(layer, CpuRoute(float32_prompts=True))
    assert isinstance(layer, RoutedLinear) and route_of(layer) == CpuRoute(float32_prompts=True)
    g = torch.Generator().manual_seed(1)
    big = torch.randn(1, MIN_ROWS, 32, generator=g).bfloat16()
    one = big[:, :1]
    with torch.no_grad():
        got_big, got_one = layer(big), layer(one)
    assert got_big.dtype == torch.bfloat16
    assert torch.equal(got_big, F.linear(big.float(), w.float(), b.float()).to(torch.bfloat16))
    assert torch.equal(got_one, F.linear(one, w, b))  # decode rows keep PyTorch's bf16 routine


def test_the_route_changes_no_parameter_and_no_state_dict_key(bloom_dir):
    lm = load_model(bloom_dir, dtype="bf16", device="cpu")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    apply_route(lm.model, CpuRoute(float32_prompts=True))
    after = lm.model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert any(isinstance(m, RoutedLinear) for m in lm.model.modules())
    assert not any(type(m) is torch.nn.Linear for m in lm.model.modules())


def test_a_bf16_model_with_fp32_prompts_gives_the_same_reply(bloom_dir, one_torch_thread):
    plain = load_model(bloom_dir, dtype="bf16", device="cpu")
    routed = load_model(bloom_dir, dtype="bf16", device="cpu")
    apply_route(routed.model, CpuRoute(float32_prompts=True))
    ids = plain.tokenizer.encode("请把这句话翻译成英文：春眠不觉晓，处处闻啼鸟。" * 2, add_special_tokens=False)
    assert len(ids) >= MIN_ROWS
    with torch.inference_mode():
        a = ModelDecoder(plain.model).forward(torch.tensor([ids]), ModelDecoder(plain.model).new_cache())
        b = ModelDecoder(routed.model).forward(torch.tensor([ids]), ModelDecoder(routed.model).new_cache())
    torch.testing.assert_close(a, b, rtol=0.05, atol=0.1)
    assert a.argmax() == b.argmax()
    cfg = GenerationConfig(do_sample=False, max_new_tokens=8)
    assert len(generate_ids(routed, ids, cfg)) == 8


def test_choose_route_follows_the_weights_and_the_cpu(bloom_dir, monkeypatch):
    bf16 = load_model(bloom_dir, dtype="bf16", device="cpu").model
    fp32 = load_model(bloom_dir, dtype="fp32", device="cpu").model
    monkeypatch.setattr(cpu_route, "slow_half_gemm", lambda dtype: True)  # an AVX2-only CPU
    assert choose_route(bf16, kernels_ready=False) == CpuRoute(float32_prompts=True)
    assert choose_route(fp32, kernels_ready=True) == CpuRoute()  # fp32: nothing to convert, no kernel
    monkeypatch.setattr(cpu_route, "kernels_pay", lambda model: True)
    assert choose_route(bf16, kernels_ready=True) == CpuRoute(gemv=True, float32_prompts=True)
    assert choose_route(bf16, kernels_ready=False).gemv is False  # never without built kernels
    monkeypatch.setattr(cpu_route, "slow_half_gemm", lambda dtype: False)  # AVX-512 BF16 / AMX
    monkeypatch.setattr(cpu_route, "kernels_pay", lambda model: False)
    assert choose_route(bf16, kernels_ready=True) == CpuRoute()


def test_the_service_writes_the_route_once_when_it_prepares(bloom_dir, monkeypatch):
    from firefly_core.models.service import ModelRequest, ModelService, describe

    monkeypatch.setattr(cpu_route, "slow_half_gemm", lambda dtype: True)
    lm = ModelService().get(ModelRequest(str(bloom_dir), device="cpu", dtype="bf16", engine="torch", threads=1))
    assert route_of(lm.model) == CpuRoute(float32_prompts=True)
    assert "fp32 prompts" in describe(lm)
    fp32 = ModelService().get(ModelRequest(str(bloom_dir), device="cpu", dtype="fp32", engine="torch", threads=1))
    assert route_of(fp32.model) == CpuRoute() and "fp32 prompts" not in describe(fp32)


def test_no_per_call_interceptor_is_left_in_the_decode_path():
    """The route lives in the layers: the generation package installs no TorchFunctionMode."""
    import pathlib

    import firefly_core.generation as generation

    folder = pathlib.Path(generation.__file__).parent
    assert not [p.name for p in folder.glob("*.py") if "TorchFunctionMode" in p.read_text("utf-8")]
