"""The model service: loads serialized and exact under threads, shared, cancellable, prepared once."""

from __future__ import annotations

import threading

import pytest
import torch

from firefly_core.errors import ConfigError
from firefly_core.generation import GenerationConfig, generate_ids
from firefly_core.models.loading import load_model
from firefly_core.models.service import LoadCancelled, ModelRequest, ModelService


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch, one_torch_thread):
    """Saved settings are read by request_for: each test starts from none."""
    monkeypatch.setenv("FIREFLY_HOME", str(tmp_path / "home"))


def _assert_same_weights(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def _request(path, **kw):
    return ModelRequest(str(path), device="cpu", dtype="fp32", **kw)


def test_two_threads_load_two_models_then_a_third_all_exact(bloom_dir, qwen_dir):
    # Single-threaded references first (qwen2 has an untied lm_head: a "newly initialized" random
    # head, the symptom of concurrent loads, would differ from it).
    ref_bloom = load_model(bloom_dir, device="cpu", dtype="fp32")
    ref_qwen = load_model(qwen_dir, device="cpu", dtype="fp32")
    service = ModelService(keep=3)
    start = threading.Barrier(2)
    got: dict[str, object] = {}
    errors: list[BaseException] = []

    def load(name, path):
        try:
            start.wait()
            got[name] = service.get(_request(path))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=load, args=a) for a in (("bloom", bloom_dir), ("qwen", qwen_dir))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    _assert_same_weights(got["bloom"], ref_bloom)
    _assert_same_weights(got["qwen"], ref_qwen)
    third = service.get(ModelRequest(str(qwen_dir), device="cpu", dtype="bf16"))
    ref_bf16 = {k: v.to(torch.bfloat16) for k, v in ref_qwen.model.state_dict().items()}
    for name, tensor in third.model.state_dict().items():
        assert torch.equal(tensor, ref_bf16[name]), name
    # And the loaded models generate what the references generate.
    prompt = ref_qwen.tokenizer.encode("你好，萤火虫", add_special_tokens=False)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=12)
    assert generate_ids(got["qwen"], prompt, cfg) == generate_ids(ref_qwen, prompt, cfg)


def test_raw_load_model_in_two_threads_is_exact(qwen_dir):
    """Even callers that bypass the service cannot corrupt a load: load_model has its own lock."""
    ref = load_model(qwen_dir, device="cpu", dtype="fp32")
    start = threading.Barrier(2)
    out: list = []

    def load():
        start.wait()
        out.append(load_model(qwen_dir, device="cpu", dtype="fp32"))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2
    for lm in out:
        _assert_same_weights(lm, ref)


def test_the_same_request_shares_one_object_loaded_once(bloom_dir):
    service = ModelService()
    steps: list[str] = []
    start = threading.Barrier(3)
    got: list = []

    def load():
        start.wait()
        got.append(service.get(_request(bloom_dir), status=lambda s: steps.append(s.step)))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and got[0] is got[1] is got[2]
    assert steps.count("load") == 1 and steps[-1] == "ready"
    # A folder given with a trailing slash is the same model; another dtype is another object.
    assert service.get(_request(str(bloom_dir) + "/")) is got[0]
    other = service.get(ModelRequest(str(bloom_dir), device="cpu", dtype="bf16"))
    assert other is not got[0]
    assert service.generation_lock(got[0]) is got[0].generation_lock
    service.unload(str(bloom_dir))
    assert service.loaded() == []


def test_keeps_only_the_most_recent_models(bloom_dir, qwen_dir):
    service = ModelService(keep=1)
    a = service.get(_request(bloom_dir))
    b = service.get(_request(qwen_dir))
    assert service.loaded() == [b]
    assert service.get(_request(bloom_dir)) is not a  # dropped, so loaded again


def test_cancel_during_a_load_keeps_nothing_and_the_next_load_works(bloom_dir):
    service = ModelService()
    cancel = threading.Event()

    def status(s):
        if s.step == "load":
            cancel.set()  # the user pressed cancel while the weights were being read

    with pytest.raises(LoadCancelled):
        service.get(_request(bloom_dir), status=status, cancel=cancel)
    assert service.loaded() == []
    lm = service.get(_request(bloom_dir))
    assert lm.decoder is not None


def test_cancel_while_waiting_for_another_load(bloom_dir, qwen_dir):
    service = ModelService()
    inside, release = threading.Event(), threading.Event()

    def slow_status(s):
        if s.step == "load":
            inside.set()
            release.wait(60)

    first = threading.Thread(target=lambda: service.get(_request(bloom_dir), status=slow_status))
    first.start()
    try:
        assert inside.wait(60)
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(LoadCancelled):
            service.get(_request(qwen_dir), cancel=cancel)  # returns although the lock is held
    finally:
        release.set()
        first.join()
    assert [lm.path.name for lm in service.loaded()] == [bloom_dir.name]


def test_request_for_layers_saved_settings_and_overrides(bloom_dir):
    from firefly_core.models.user_settings import update_model_settings

    update_model_settings(str(bloom_dir), quantize="int8", threads=3, cuda_graph=False, prompt_format="firefly-v2")
    service = ModelService()
    r = service.request_for(str(bloom_dir))
    assert (r.quantize, r.threads, r.cuda_graph, r.prompt_format) == ("int8", 3, False, "firefly-v2")
    r = service.request_for(str(bloom_dir), threads=1, engine="torch", quantize=None)
    assert (r.quantize, r.threads, r.engine) == ("int8", 1, "torch")  # None keeps the saved value
    with pytest.raises(ConfigError):
        service.request_for(str(bloom_dir), thread=2)
    with pytest.raises(ConfigError):
        service.request_for(str(bloom_dir), engine="torch", quantize="q4_k_m")
    with pytest.raises(ConfigError):
        update_model_settings(str(bloom_dir), threads=0)


def test_prepared_once_with_threads_and_decoder(bloom_dir):
    service = ModelService()
    lm = service.get(ModelRequest(str(bloom_dir), device="cpu", dtype="fp32", threads=1, engine="torch"))
    assert lm.engine == "torch" and lm.decoder.threads == 1
    assert lm.model.firefly_cpu_route.gemv is False  # fp32: no kernel
    # The decoder the loop uses is the one the service attached (prepared once).
    from firefly_core.generation import decoder_for

    assert decoder_for(lm) is lm.decoder


def test_int8_through_the_service_matches_quantize_by_hand(bloom_dir):
    from firefly_core.generation.quantize import apply_quantization

    service = ModelService()
    lm = service.get(ModelRequest(str(bloom_dir), device="cpu", dtype="bf16", quantize="int8", engine="torch"))
    from firefly_core.models.service import prepare_cpu_route

    by_hand = load_model(bloom_dir, device="cpu", dtype="bf16")
    apply_quantization(by_hand, "int8")
    prepare_cpu_route(by_hand.model)
    prompt = by_hand.tokenizer.encode("床前明月光", add_special_tokens=False)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=10)
    assert generate_ids(lm, prompt, cfg) == generate_ids(by_hand, prompt, cfg)


def test_vocabulary_larger_than_the_embedding_is_refused_at_load(tmp_path):
    import shutil

    from firefly_core.errors import InvalidModelError
    from firefly_core.testkit import build_model_folder

    small = build_model_folder(tmp_path / "small", "bloom", vocab_size=300)
    big = build_model_folder(tmp_path / "big", "bloom", vocab_size=500)
    for f in big.glob("tokenizer*"):
        shutil.copy(f, small / f.name)
    with pytest.raises(InvalidModelError, match="rows"):
        ModelService().get(_request(small))


def test_engine_resolution(monkeypatch):
    from firefly_core.models import service

    monkeypatch.setattr(service, "llamacpp_unavailable", lambda: None)  # as if llama.cpp were installed
    r = service.resolve_engine
    assert r(ModelRequest("m"), "cpu") == ("llamacpp", None)
    assert r(ModelRequest("m"), "cuda") == ("torch", None)
    assert r(ModelRequest("m", engine="torch"), "cpu") == ("torch", None)
    assert r(ModelRequest("m", quantize="int8"), "cpu") == ("torch", None)
    assert r(ModelRequest("m", dtype="fp32"), "cpu") == ("torch", None)  # an explicit dtype is torch's
    assert r(ModelRequest("m", dtype="bf16", quantize="q4_k_m"), "cpu") == ("llamacpp", None)
    monkeypatch.setattr(service, "llamacpp_unavailable", lambda: "not installed")
    assert r(ModelRequest("m"), "cpu") == ("torch", "not installed")
    with pytest.raises(service.FireflyError, match="not installed"):
        r(ModelRequest("m", engine="llamacpp"), "cpu")
