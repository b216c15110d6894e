"""Decoder weights as column panels (panels.py): the same function as the Linear they replace, for any rows,
through the native kernel and through PyTorch; packed in place, so the model stays whole and no row-major copy
is kept."""

import gc
import weakref

import numpy as np
import pytest
import torch

from conftest import native_kernel_expected
from troubadour import native
from troubadour.backends import load_backend
from troubadour.engine import Engine, Job
from troubadour.panels import PanelLinear, pack, pack_decoder, width_for
from troubadour.params import GenParams

needs_kernel = pytest.mark.skipif(not native_kernel_expected(), reason="not Linux with a C compiler")


def test_panel_width_is_the_widest_that_divides():
    assert [width_for(n) for n in (4096, 1024, 1536, 768, 256, 64)] == [512, 512, 512, 384, 256, 64]
    assert width_for(1000) is None and width_for(32) is None


@pytest.mark.parametrize("width,out,bias", [(1024, 3072, False), (4096, 1024, True), (768, 200, True),
                                            (256, 96, True), (64, 7, False)])
def test_equals_the_linear_it_replaces_for_any_rows(width, out, bias):
    torch.manual_seed(width + out)
    lin = torch.nn.Linear(width, out, bias=bias)
    p = pack(lin)
    assert isinstance(p, PanelLinear) and (p.in_features, p.out_features) == (width, out)
    torch.testing.assert_close(p.dense(), lin.weight.detach())
    kernel = native.kernel()
    assert kernel is not None or not native_kernel_expected(), native.why_not()
    for rows in (1, 2, 3, 4, 5, 8, 9, 40):
        x = torch.randn(rows, 1, width)
        ref = lin(x).detach()
        torch.testing.assert_close(p(x), ref, atol=1e-4, rtol=1e-4)              # PyTorch, panel by panel
        torch.testing.assert_close(p.run(x, kernel), ref, atol=1e-4, rtol=1e-4)  # the kernel for 1-8 rows
        torch.testing.assert_close(p.run(x, None), ref, atol=1e-4, rtol=1e-4)


def test_what_a_panel_cannot_hold_stays_a_linear():
    assert pack(torch.nn.Linear(1000, 8)) is None                               # no panel width divides 1000
    assert pack(torch.nn.Linear(256, 8).to(torch.bfloat16)) is None             # the kernel is fp32


def test_other_dtypes_go_through_pytorch():
    lin = torch.nn.Linear(256, 40)
    p = pack(lin).to(torch.bfloat16)
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    torch.testing.assert_close(p.run(x, native.kernel()), lin.to(torch.bfloat16)(x), atol=0.1, rtol=0.05)


def test_row_views_share_memory_and_compute_their_rows():
    torch.manual_seed(0)
    lin = torch.nn.Linear(512, 96)
    p = pack(lin)
    k = p.rows(32, 64)
    assert k.panels.untyped_storage().data_ptr() == p.panels.untyped_storage().data_ptr()
    x = torch.randn(2, 512)
    ref = x @ lin.weight.detach()[32:64].T + lin.bias.detach()[32:64]
    torch.testing.assert_close(k(x), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(k.run(x, native.kernel()), ref, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def wide_path(tmp_path_factory):
    from troubadour.testmodel import build_test_model

    return build_test_model(tmp_path_factory.mktemp("wide") / "m", layers=2, hidden=256, heads=4)


def _params(model) -> dict[int, int]:
    """Bytes of each distinct storage the decoder holds."""
    return {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}


@needs_kernel
def test_an_engine_packs_its_decoder_in_place_and_the_model_stays_whole(wide_path):
    pristine, be = load_backend(str(wide_path), "cpu"), load_backend(str(wide_path), "cpu")
    layer = be.decoder.model.decoder.layers[0]
    before = sum(_params(be.decoder).values())
    old = [weakref.ref(m.weight) for m in (layer.fc1, layer.fc2, layer.self_attn.q_proj, be.decoder.lm_heads[0])]
    eng = Engine(be)
    for mod in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj,
                layer.encoder_attn.q_proj, layer.encoder_attn.out_proj, layer.fc1, layer.fc2, *be.decoder.lm_heads):
        assert isinstance(mod, PanelLinear)
    assert not isinstance(layer.encoder_attn.k_proj, PanelLinear)   # applied to the text once per request
    gc.collect()
    assert all(r() is None for r in old)                            # the row-major weights are gone
    assert sum(_params(be.decoder).values()) <= before              # and nothing is held twice

    # transformers' own forward on the packed modules: the same audio as on the checkpoint as loaded
    inputs = be.tokenizer(["calm piano"], return_tensors="pt")
    ref = pristine.model.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=28)
    got = be.model.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=28)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-4)

    # a second engine on the same backend finds it packed, and both generate the same track
    assert pack_decoder(eng._layers, eng._heads, eng._fused) == 0
    again = Engine(be)
    job = Job("calm piano", GenParams(duration=0.5, top_k=1))
    np.testing.assert_array_equal(again.generate([job])[0].codes, eng.generate([job])[0].codes)
    np.testing.assert_allclose(eng.generate([job])[0].audio, ref.numpy()[0, :, :16000], atol=1e-4)


def test_without_the_kernel_nothing_is_packed(wide_path):
    be = load_backend(str(wide_path), "cpu")
    Engine(be, native_kernel=False)
    layer = be.decoder.model.decoder.layers[0]
    assert isinstance(layer.fc1, torch.nn.Linear) and isinstance(be.decoder.lm_heads[0], torch.nn.Linear)
