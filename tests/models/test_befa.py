"""BeFA adapter: size formula, dense recomputation, dropout, gradients, bad input; the models'
``befa_inputs`` hook (what BeFA reads at its insertion point) and their shared embedding names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import CONTENT_MODELS, MODELS, BeFAInput, create_model
from models.befa import BeFA, adapt_all, befa_hidden_size, befa_parameter_count
from tests._model_data import tiny_data


def _formula(d: int, h: int) -> int:
    return (d * h + h) + (h * h + h) + (h * d + d)


@pytest.mark.parametrize("t, hidden, expected", [(0.125, 8, _formula(64, 8)), (1, 64, 12_480), (8, 512, 328_768)])
def test_parameter_count_matches_formula(t, hidden, expected):
    adapter = BeFA(64, t=t, dropout=0.1)
    assert adapter.hidden == hidden
    assert sum(p.numel() for p in adapter.parameters()) == expected
    assert befa_parameter_count(64, t) == expected


def test_hidden_size_any_positive_t():
    assert befa_hidden_size(64, 0.3) == 19  # 19.2
    assert befa_hidden_size(4, 0.01) == 1  # never below 1
    with pytest.raises(ValueError, match="positive"):
        befa_hidden_size(64, 0)
    with pytest.raises(ValueError, match="dropout"):
        BeFA(8, 1.0, dropout=1.0)


def _dense_gate(adapter: BeFA, c: np.ndarray) -> np.ndarray:
    """The spec's equation in float64 numpy, reading only the adapter's weights."""
    w1, b1 = adapter.decouple.weight.detach().double().numpy(), adapter.decouple.bias.detach().double().numpy()
    w2, b2 = adapter.filter.weight.detach().double().numpy(), adapter.filter.bias.detach().double().numpy()
    w3, b3 = adapter.recombine.weight.detach().double().numpy(), adapter.recombine.bias.detach().double().numpy()
    z = np.maximum(c @ w1.T + b1, 0)
    z = np.maximum(np.tanh(z) @ w2.T + b2, 0)
    return 1 / (1 + np.exp(-(z @ w3.T + b3)))


@pytest.mark.parametrize("t", [0.5, 1.0, 2.5])
def test_forward_equals_dense_recomputation(t):
    torch.manual_seed(0)
    adapter = BeFA(6, t=t, dropout=0.5).eval()
    c, e = torch.randn(9, 6), torch.randn(9, 6)
    g = _dense_gate(adapter, c.double().numpy())
    np.testing.assert_allclose(adapter.gate(c).detach().numpy(), g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adapter(c, e).detach().numpy(), e.double().numpy() * g, rtol=1e-5, atol=1e-6)
    assert ((adapter.gate(c) > 0) & (adapter.gate(c) < 1)).all()


def test_dropout_only_in_training():
    torch.manual_seed(1)
    adapter = BeFA(16, t=2, dropout=0.5)
    c = torch.randn(32, 16)
    adapter.eval()
    assert torch.equal(adapter.gate(c), adapter.gate(c))
    adapter.train()
    assert not torch.equal(adapter.gate(c), adapter.gate(c))


def test_gradients_reach_every_adapter_weight_and_both_inputs():
    torch.manual_seed(2)
    adapter = BeFA(8, t=1, dropout=0.1)
    c = torch.randn(5, 8, requires_grad=True)
    e = torch.randn(5, 8, requires_grad=True)
    adapter(c, e).pow(2).sum().backward()
    for name, p in adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert c.grad.abs().sum() > 0 and e.grad.abs().sum() > 0


def test_shape_errors_are_clear():
    adapter = BeFA(8)
    with pytest.raises(ValueError, match=r"content must be \(N, 8\)"):
        adapter.gate(torch.randn(3, 7))
    with pytest.raises(ValueError, match="same shape"):
        adapter(torch.randn(3, 8), torch.randn(4, 8))


def test_adapt_all_equals_the_adapters_one_by_one():
    """The stacked (bmm) run of several modalities' adapters: same values and gradients."""
    torch.manual_seed(4)
    adapters = [BeFA(8, t=1.5, dropout=0.3).eval() for _ in range(3)]
    contents = [torch.randn(11, 8, requires_grad=True) for _ in range(3)]
    e = torch.randn(11, 8, requires_grad=True)
    w = [torch.randn(11, 8) for _ in range(3)]

    def run(fn):
        for t in (e, *contents, *(p for a in adapters for p in a.parameters())):
            t.grad = None
        outs = fn()
        sum((o * wj).sum() for o, wj in zip(outs, w)).backward()
        grads = [t.grad.clone() for t in (e, *contents, *(p for a in adapters for p in a.parameters()))]
        return [o.detach() for o in outs], grads

    stacked, stacked_grads = run(lambda: adapt_all(adapters, contents, e))
    single, single_grads = run(lambda: [a(c, e) for a, c in zip(adapters, contents)])
    for got, want in zip(stacked + stacked_grads, single + single_grads):
        torch.testing.assert_close(got, want)
    # training: dropout is active in both layers of every modality (outputs leave eval's values)
    for a in adapters:
        a.train()
    trained = adapt_all(adapters, contents, e)
    assert all(not torch.allclose(t, s) for t, s in zip(trained, stacked))
    assert all(t.shape == (11, 8) for t in trained)
    # adapters that cannot be stacked (different sizes) run one by one, still correct
    mixed = [BeFA(8, t=1.0).eval(), BeFA(8, t=2.0).eval()]
    torch.testing.assert_close(adapt_all(mixed, contents[:2], e)[1], mixed[1](contents[1], e))
    with pytest.raises(ValueError, match="same shape"):
        adapt_all(adapters[:2], [torch.randn(11, 8), torch.randn(10, 8)], e)


def _consumed(model, modality: str) -> torch.Tensor:
    """What the +BeFA model itself consumes at the insertion point (the default, "forward"), all items (eval mode)."""
    if model.name == "bm3":
        return model.adapted()[list(model.projections).index(modality)]
    if model.name == "freedom":
        return model.adapted(model.content())[list(model.projections).index(modality)]
    if model.name == "lattice":
        return model.adapted(model.content())[model.modalities.index(modality)]
    if model.name == "mgcn":
        return model.purified(modality)
    raise AssertionError(f"no insertion point known for {model.name}")


@pytest.mark.parametrize("name", CONTENT_MODELS)
def test_befa_inputs_are_what_the_adapters_gate_inside_the_model(name):
    torch.manual_seed(5)
    data = tiny_data()
    model = create_model(name, data, {"embedding_dim": 4, "adapter": "befa"}).eval()
    with torch.no_grad():
        inputs = model.befa_inputs()
        assert sorted(inputs) == data.modalities
        for m, got in inputs.items():
            assert isinstance(got, BeFAInput)
            assert got.content.shape == got.behaviour.shape == (data.num_items, 4)
            assert got.behaviour is model.item_embedding
            torch.testing.assert_close(got.content, model.projections[m]())
            torch.testing.assert_close(model.adapters[m](*got), _consumed(model, m))
        only = model.befa_inputs(["text"])
        assert list(only) == ["text"]
        torch.testing.assert_close(only["text"].content, inputs["text"].content)
        with pytest.raises(KeyError):
            model.befa_inputs(["audio"])
    # without an adapter the hook gives the same c_m and E_i (what +BeFA would gate)
    base = create_model(name, data, {"embedding_dim": 4})
    assert sorted(base.befa_inputs()) == data.modalities


@pytest.mark.parametrize("name", sorted(set(MODELS) - set(CONTENT_MODELS)))
def test_models_without_content_have_no_befa_inputs(name):
    assert create_model(name, tiny_data()).befa_inputs() == {}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_names_its_id_embeddings_alike(name):
    """user_embedding / item_embedding (U x d, I x d) wherever a model has ID embeddings."""
    data = tiny_data()
    params = dict(create_model(name, data, {"embedding_dim": 4}).named_parameters())
    assert not {"user_emb", "item_emb"} & set(params)
    if getattr(MODELS[name], "trainable", True):  # MostPop and ItemKNN-CBF learn nothing
        assert params["user_embedding"].shape == (data.num_users, 4)
        assert params["item_embedding"].shape == (data.num_items, 4)
