"""MGCN (+BeFA "forward" and "content", +the authors' variant, the authors' skeleton with the
purifier gate): dense re-computation of the equations, gradients, where the adapters reach the
scores, the refused "loss" insertion, modality counts, feature tables, a short training run that
must beat random ranking."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from models import create_model, make_config
from models.base import TrainData
from models.mgcn import MGCN

N_USERS, N_ITEMS = 6, 8
USERS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 0])
ITEMS = torch.tensor([0, 1, 1, 2, 3, 5, 4, 5, 6, 3, 7, 0, 6])
BATCH = (
    torch.tensor([0, 1, 2, 3, 5, 0]),
    torch.tensor([1, 2, 3, 5, 7, 1]),
    torch.tensor([4, 6, 0, 2, 1, 3]),
)  # a repeated user and positive
VARIANTS = {
    "base": {},
    "befa": {"adapter": "befa", "befa": {"t": 2.0, "dropout": 0.0}},
    "authors": {"adapter": "befa", "befa": {"t": 0.5, "dropout": 0.0, "variant": "authors"}},
    "content": {"adapter": "befa", "befa": {"t": 2.0, "dropout": 0.0, "insertion": "content"}},
    "authors-content": {
        "adapter": "befa",
        "befa": {"t": 0.5, "dropout": 0.0, "variant": "authors", "insertion": "content"},
    },
    "authors-purifier": {"skeleton": "authors"},  # the study's architecture control: no adapter
}
BEFA_VARIANTS = sorted(v for v, overrides in VARIANTS.items() if overrides.get("adapter") == "befa")


def tiny_data(dims=(("image", 5), ("text", 3)), seed=0) -> TrainData:
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(N_ITEMS, d, generator=g) for m, d in dims}
    return TrainData(N_USERS, N_ITEMS, USERS.clone(), ITEMS.clone(), features=feats)


# -- an independent dense implementation of the spec's equations ----------------
def dense_knn(x: torch.Tensor, k: int) -> torch.Tensor:
    xn = x / x.norm(dim=1, keepdim=True)
    sim = xn @ xn.T
    val, idx = sim.topk(k, dim=1)
    s = torch.zeros_like(sim).scatter(1, idx, val)
    d = s.sum(1).pow(-0.5)
    return d[:, None] * s * d[None, :]


def dense_sym_adj(users, items) -> torch.Tensor:
    a = torch.zeros(N_USERS + N_ITEMS, N_USERS + N_ITEMS)
    a[users, items + N_USERS] = 1
    a[items + N_USERS, users] = 1
    d = (a.sum(1) + 1e-7).pow(-0.5)
    return d[:, None] * a * d[None, :]


def linear(layer, x):
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def dense_gate(adapter, c):
    z = torch.relu(linear(adapter.decouple, c))
    z = torch.relu(linear(adapter.filter, torch.tanh(z)))
    return torch.sigmoid(linear(adapter.recombine, z))


def dense_mgcn(model: MGCN, data: TrainData, cfg, variant: str):
    """(final N x d, side N x d, content N x d) from the equations, with dense matrices."""
    adj = dense_sym_adj(data.train_users, data.train_items)
    r_hat = adj[:N_USERS, N_USERS:]
    x = torch.cat([model.user_embedding, model.item_embedding])
    layers = [x]
    for _ in range(cfg.n_ui_layers):
        layers.append(adj @ layers[-1])
    content = torch.stack(layers).mean(0)
    views = []
    for m in data.modalities:
        c = linear(model.projections[m].proj, data.features[m])
        if variant in ("base", "authors-purifier"):
            z = model.item_embedding * torch.sigmoid(linear(model.purifiers[m], c))
        elif cfg.befa.insertion == "content":
            z = c * dense_gate(model.adapters[m], c)
        else:  # "forward": the gate replaces the purifier's
            z = model.item_embedding * dense_gate(model.adapters[m], c)
        z = dense_knn(data.features[m], cfg.knn_k) @ z
        views.append(torch.cat([r_hat @ z, z]))
    if variant.startswith("authors"):
        side = sum(views) / len(views)
    else:
        q = [linear(model.query[2], torch.tanh(linear(model.query[0], v))) for v in views]  # (N, 1) each
        e = torch.exp(torch.cat(q, 1))
        alpha = e / e.sum(1, keepdim=True)
        common = sum(alpha[:, j : j + 1] * v for j, v in enumerate(views))
        specific = [
            (v - common) * torch.sigmoid(linear(model.prefer_gates[m], content)) for m, v in zip(data.modalities, views)
        ]
        side = (sum(specific) + common) / (len(views) + 1)
    return content + side, side, content


def dense_info_nce(a, b, tau):
    total = 0.0
    for r in range(a.size(0)):
        cos = torch.stack([torch.dot(a[r], b[s]) / (a[r].norm() * b[s].norm()) for s in range(b.size(0))])
        total = total - torch.log(torch.exp(cos[r] / tau) / torch.exp(cos / tau).sum())
    return total / a.size(0)


def dense_loss(final, side, content, users, pos, neg, cfg, variant):
    u, p, n = final[users], final[pos + N_USERS], final[neg + N_USERS]
    bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    loss = bpr + cfg.reg * 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / cfg.batch_size
    if not variant.startswith("authors"):
        cl = dense_info_nce(side[pos + N_USERS], content[pos + N_USERS], cfg.temperature) + dense_info_nce(
            side[users], content[users], cfg.temperature
        )
        loss = loss + cfg.cl_weight * cl
    return loss


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_inference_and_loss_match_dense_equations(variant):
    torch.manual_seed(0)
    data = tiny_data()
    cfg = MGCN.Config(embedding_dim=4, knn_k=3, reg=1e-2, cl_weight=0.3, batch_size=6, **VARIANTS[variant])
    model = MGCN(data, cfg)
    model.eval()
    users_e, items_e = model.inference_embeddings()
    with torch.no_grad():
        final, _, _ = dense_mgcn(model, data, cfg, variant)
    torch.testing.assert_close(users_e, final[:N_USERS], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items_e, final[N_USERS:], rtol=1e-5, atol=1e-6)

    model.train()
    loss = model.loss(*BATCH)
    expected = dense_loss(*dense_mgcn(model, data, cfg, variant), *BATCH, cfg, variant)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad(expected, params, allow_unused=True)
    for (name, param), a, b in zip(model.named_parameters(), got, want):
        a = torch.zeros_like(param) if a is None else a
        b = torch.zeros_like(param) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")


def test_variant_structure_and_adapter_gradients():
    data = tiny_data()
    base = MGCN(data, MGCN.Config(embedding_dim=4, knn_k=3))
    assert (
        hasattr(base, "purifiers") and not hasattr(base, "adapters") and base.parameter_report()["params_adapter"] == 0
    )
    for variant in BEFA_VARIANTS:
        # d = 16: with d = 4 and t = 0.5 the two hidden ReLUs can be dead for all 8 items
        torch.manual_seed(0)
        model = MGCN(data, MGCN.Config(embedding_dim=16, knn_k=3, **VARIANTS[variant]))
        assert not hasattr(model, "purifiers")  # BeFA replaces the purifier gate
        assert hasattr(model, "query") == (not variant.startswith("authors"))  # the authors' model has no fuser
        model.train()
        loss = model.loss(*BATCH)
        assert torch.isfinite(loss)  # a training step under each insertion: finite, gradients reach the adapters
        loss.backward()
        assert model.item_embedding.grad.abs().sum() > 0
        adapter_grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("adapters.")}
        assert len(adapter_grads) == 2 * 6
        for name, g in adapter_grads.items():
            assert g is not None and g.abs().sum() > 0, f"{variant}: {name} got no gradient"
        assert model.parameter_report()["params_adapter"] > 0


@pytest.mark.parametrize("variant", BEFA_VARIANTS)
def test_where_the_adapters_reach_the_scores(variant):
    """Perturbing one adapter's last bias (b3 of the image gate): the inference scores move
    under both MGCN insertions, "forward" (z_m = E_i * g_m(c_m)) and "content"
    (z_m = c_m * g_m(c_m)), since z_m is the modality view the model scores with. MGCN has
    no "loss" insertion to contrast with (refused: see the test below)."""
    torch.manual_seed(0)
    data = tiny_data()
    model = MGCN(data, MGCN.Config(embedding_dim=4, knn_k=3, **VARIANTS[variant])).eval()
    users0, items0 = model.inference_embeddings()
    with torch.no_grad():
        model.adapters["image"].recombine.bias.add_(torch.tensor([1.5, -2.0, 0.7, -0.9]))
    users1, items1 = model.inference_embeddings()
    assert not torch.allclose(users1 @ items1.T, users0 @ items0.T, atol=1e-4)


def test_content_insertion_views_do_not_read_the_item_embedding():
    """Under "content", z_m = c_m * g_m(c_m) holds no E_i (so a cold or new item's modality
    views are its content alone); under "forward" it gates E_i (zero E_i, zero z_m)."""
    torch.manual_seed(0)
    data = tiny_data()
    for variant, zero in (("content", False), ("befa", True)):
        model = MGCN(data, MGCN.Config(embedding_dim=4, knn_k=3, **VARIANTS[variant])).eval()
        with torch.no_grad():
            before = model.purified("text").clone()
            model.item_embedding.zero_()
            after = model.purified("text")
        if zero:
            assert not after.any()
        else:
            torch.testing.assert_close(after, before)
            assert after.abs().sum() > 0


def test_loss_insertion_is_refused_at_config_validation():
    """MGCN's adapter is its purifier, on the scoring path: there is no loss-only placement.
    The config refuses it (make_config, so the CLI's early checks, before any work), at the
    key befa.insertion, naming the valid choices; the model refuses an unvalidated one."""
    for build in (
        lambda: make_config("mgcn", {"adapter": "befa", "befa.insertion": "loss"}),
        lambda: MGCN.Config(adapter="befa", befa={"insertion": "loss", "variant": "authors"}),
    ):
        with pytest.raises(ValueError, match="'forward' or 'content'") as err:
            build()
        assert isinstance(err.value, ValidationError)
        assert [e["loc"] for e in err.value.errors()] == [("befa", "insertion")]
        assert "does not exist for MGCN" in str(err.value)
    unchecked = MGCN.Config.model_construct(
        adapter="befa", befa=make_config("lattice", {"befa.insertion": "loss"}).befa
    )
    with pytest.raises(ValueError, match="does not exist for MGCN"):
        MGCN(tiny_data(), unchecked)
    # what stays valid: no adapter (insertion unread), "forward" (default) and "content", either variant
    assert make_config("mgcn", {"befa.insertion": "loss"}).adapter == "none"
    for insertion in ("forward", "content"):
        for variant in ("default", "authors"):
            cfg = make_config(
                "mgcn", {"adapter": "befa", "befa.insertion": insertion, "befa.variant": variant, "embedding_dim": 4}
            )
            assert create_model("mgcn", tiny_data(), cfg).authors == (variant == "authors")
    assert MGCN.Config(adapter="befa").befa.insertion == "forward"


def test_authors_variant_has_no_contrastive_term():
    torch.manual_seed(0)
    data = tiny_data()
    losses = []
    for cl in (0.0, 5.0):
        torch.manual_seed(0)
        model = MGCN(data, MGCN.Config(embedding_dim=4, knn_k=3, cl_weight=cl, **VARIANTS["authors"]))
        model.train()
        losses.append(model.loss(*BATCH))
    torch.testing.assert_close(losses[0], losses[1])
    torch.manual_seed(0)
    with_cl = MGCN(data, MGCN.Config(embedding_dim=4, knn_k=3, cl_weight=5.0, **VARIANTS["befa"]))
    torch.manual_seed(0)
    without = MGCN(data, MGCN.Config(embedding_dim=4, knn_k=3, cl_weight=0.0, **VARIANTS["befa"]))
    assert with_cl.loss(*BATCH) > without.loss(*BATCH)  # InfoNCE >= 0 and is kept by default


def test_the_architecture_control_is_the_authors_skeleton_with_the_purifier_gate():
    """skeleton="authors" without the adapter (the study's control for the authors' LATTICE_BeFA):
    MGCN's purifier gate, no fuser and no InfoNCE parameters, side = the mean of the purified
    modality views; its parameters are the authors' +BeFA model's with purifiers for adapters."""
    torch.manual_seed(0)
    data = tiny_data()
    control = MGCN(data, MGCN.Config(embedding_dim=4, knn_k=3, **VARIANTS["authors-purifier"]))
    authors = MGCN(data, MGCN.Config(embedding_dim=4, knn_k=3, **VARIANTS["authors"]))
    groups = {n.split(".")[0] for n, _ in control.named_parameters()}
    assert control.authors and not control.befa and control.parameter_report()["params_adapter"] == 0
    assert groups == {"user_embedding", "item_embedding", "projections", "purifiers"}  # no query, no prefer_gates
    assert {n.split(".")[0] for n, _ in authors.named_parameters()} == groups - {"purifiers"} | {"adapters"}
    control.eval()
    with torch.no_grad():
        for m in data.modalities:  # the purifier gate: z_m = E_i * sigmoid(W_m c_m + b_m)
            gate = torch.sigmoid(control.purifiers[m](control.projections[m]()))
            torch.testing.assert_close(control.purified(m), control.item_embedding * gate)
        content, views = control.views()
        full = [torch.cat(v) for v in views]
        mean = torch.stack(full).mean(0)
        torch.testing.assert_close(control.side(content, full), mean)  # side = (1/M) sum_m v_m
        torch.testing.assert_close(torch.cat(control.inference_embeddings()), content + mean)
    losses = []
    for cl in (0.0, 5.0):  # no InfoNCE term: its weight does not reach the loss
        torch.manual_seed(0)
        model = MGCN(data, MGCN.Config(embedding_dim=4, knn_k=3, cl_weight=cl, **VARIANTS["authors-purifier"]))
        losses.append(model.loss(*BATCH))
    torch.testing.assert_close(losses[0], losses[1])


def test_the_architecture_control_trains_a_step():
    torch.manual_seed(0)
    data = tiny_data()
    model = create_model("mgcn", data, {"embedding_dim": 8, "knn_k": 3, "skeleton": "authors"})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    loss = model.loss(*BATCH)
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
    opt.step()
    assert all(not torch.equal(param, before[name]) for name, param in model.named_parameters())
    assert model.loss(*BATCH) < loss  # one step on the same batch lowers its loss


def test_the_skeleton_field_keeps_old_configs_and_matches_the_variant_spelling():
    """``skeleton`` is left out of dumps while "full" (configs, hashes and run folders of earlier
    runs unchanged); an old config (no skeleton key) builds the model it ran; skeleton="authors"
    with the adapter builds the model befa.variant="authors" builds; skeleton="full" set beside
    befa.variant="authors" is refused."""
    assert "skeleton" not in MGCN.Config().model_dump()
    assert "skeleton" not in MGCN.Config(**VARIANTS["authors"]).model_dump_json()
    assert make_config("mgcn", {"skeleton": "authors"}).model_dump()["skeleton"] == "authors"
    old_authors = MGCN.Config(**VARIANTS["authors"]).model_dump(mode="json")
    assert MGCN.Config.model_validate(old_authors).authors_skeleton
    old_base = MGCN.Config(befa={"variant": "authors"}).model_dump(mode="json")  # variant unread without adapter
    assert not MGCN.Config.model_validate(old_base).authors_skeleton
    data = tiny_data()
    built = []
    for spelling in ({"befa.variant": "authors"}, {"skeleton": "authors"}):
        torch.manual_seed(0)
        overrides = {"embedding_dim": 4, "knn_k": 3, "adapter": "befa", "befa.dropout": 0.0, **spelling}
        built.append(create_model("mgcn", data, overrides).eval())
    variant, skeleton = built
    assert variant.authors and skeleton.authors and variant.state_dict().keys() == skeleton.state_dict().keys()
    torch.testing.assert_close(variant.inference_embeddings(), skeleton.inference_embeddings())
    with pytest.raises(ValueError, match="contradicts"):
        make_config("mgcn", {"adapter": "befa", "befa.variant": "authors", "skeleton": "full"})


def test_zero_one_two_modalities():
    with pytest.raises(ValueError, match="at least one content modality"):
        MGCN(tiny_data(dims=()), MGCN.Config(embedding_dim=4, knn_k=3))
    for dims in ((("image", 5),), (("image", 5), ("text", 3))):
        for variant in VARIANTS:
            data = tiny_data(dims=dims)
            model = MGCN(data, MGCN.Config(embedding_dim=4, knn_k=3, **VARIANTS[variant]))
            model.train()
            loss = model.loss(*BATCH)
            loss.backward()
            assert torch.isfinite(loss)
            model.eval()
            ue, ie = model.inference_embeddings()
            assert ue.shape == (N_USERS, 4) and ie.shape == (N_ITEMS, 4) and torch.isfinite(ie).all()


def test_train_features_toggles_trainable_tables():
    data = tiny_data()
    frozen = MGCN(data, MGCN.Config(embedding_dim=4, knn_k=3))
    assert not any(n.endswith(".table") for n, _ in frozen.named_parameters())
    assert not any(n.endswith(".table") for n in frozen.state_dict())  # data, not weights: checkpoints stay small
    assert frozen.feature("text").data_ptr() == data.features["text"].data_ptr()
    trained = MGCN(data, MGCN.Config(embedding_dim=4, knn_k=3, train_features=True))
    trained.train()
    trained.loss(*BATCH).backward()
    assert trained.feature("image").requires_grad and trained.feature("image").grad.abs().sum() > 0
    rep = trained.parameter_report()
    assert rep["params_feature_tables"] == N_ITEMS * 8
    assert rep["params_base_without_feature_tables"] == rep["params_trainable"] - N_ITEMS * 8


def clustered_data(seed=0, groups=4, users_per=15, items_per=10, per_user=6):
    """Users of group g interact only with items of group g; features reveal the group."""
    g = torch.Generator().manual_seed(seed)
    nu, ni = groups * users_per, groups * items_per
    train_u, train_i, test = [], [], {}
    for u in range(nu):
        grp = u // users_per
        items = grp * items_per + torch.randperm(items_per, generator=g)[: per_user + 1]
        train_u += [u] * per_user
        train_i += items[:per_user].tolist()
        test[u] = int(items[per_user])
    centres = torch.randn(groups, 16, generator=g)
    feats = {
        "image": centres.repeat_interleave(items_per, 0) + 0.3 * torch.randn(ni, 16, generator=g),
        "text": centres[:, :8].repeat_interleave(items_per, 0) + 0.3 * torch.randn(ni, 8, generator=g),
    }
    return TrainData(nu, ni, torch.tensor(train_u), torch.tensor(train_i), features=feats), test


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_three_epochs_beat_random_ranking(variant):
    torch.manual_seed(0)
    data, test = clustered_data()
    model = MGCN(data, MGCN.Config(embedding_dim=16, knn_k=5, batch_size=32, **VARIANTS[variant]))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(3):
        model.train()
        model.pre_epoch(epoch)
        perm = torch.randperm(data.train_users.numel(), generator=gen)
        for s in range(0, perm.numel(), 32):
            idx = perm[s : s + 32]
            neg = torch.randint(data.num_items, (idx.numel(),), generator=gen)
            opt.zero_grad()
            model.loss(data.train_users[idx], data.train_items[idx], neg).backward()
            opt.step()
    model.eval()
    ue, ie = model.inference_embeddings()
    scores = ue @ ie.T
    scores[data.train_users, data.train_items] = -math.inf
    top = scores.topk(5, dim=1).indices
    recall = sum(float(test[u] in top[u].tolist()) for u in test) / len(test)
    assert recall > 3 * 5 / (data.num_items - 6)  # 3x the expected Recall@5 of a random ranking


def test_info_nce_gradient_matches_the_dense_formula():
    from models.mgcn import info_nce

    torch.manual_seed(3)
    a = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b_dup = torch.cat([b[:4], b[:1]])  # a duplicated row, as in batches with repeated items
    got = info_nce(a, b_dup, 0.2)
    ga, gb = torch.autograd.grad(3.0 * got, (a, b))
    want = dense_info_nce(a, b_dup, 0.2)
    wa, wb = torch.autograd.grad(3.0 * want, (a, b))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(ga, wa)
    torch.testing.assert_close(gb, wb)
    assert torch.autograd.gradcheck(lambda x, y: info_nce(x, y, 0.5), (a, b))
    # tau = 0.01: logits up to 100, the max-shifted branch; exp(100) would overflow float32
    a32, b32 = a.detach().float().requires_grad_(), b.detach().float().requires_grad_()
    small = info_nce(a32, b32, 0.01)
    assert torch.isfinite(small)
    torch.testing.assert_close(small.double(), dense_info_nce(a.detach(), b.detach(), 0.01), rtol=1e-4, atol=1e-4)
    assert torch.autograd.gradcheck(lambda x, y: info_nce(x, y, 0.02), (a, b))


@pytest.mark.parametrize("tau", [0.2, 0.01])
def test_weighted_info_nce_over_unique_rows_equals_the_batch_with_duplicates(tau):
    """Passing each repeated row once with its count gives the duplicated batch's value and
    gradients (the loss's shortcut for repeated users and items), both exp branches."""
    from models.mgcn import info_nce, unique_rows

    torch.manual_seed(4)
    ids = torch.tensor([3, 1, 3, 0, 3, 2, 1])  # a batch's ids, repeats included
    table_a = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    table_b = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    uniq, first, counts = unique_rows(ids)
    assert uniq.tolist() == [0, 1, 2, 3] and counts.tolist() == [1, 2, 1, 3]
    assert (ids[first] == uniq).all() and first.tolist() == [3, 1, 5, 0]

    got = info_nce(table_a[ids[first]], table_b[uniq], tau, counts)
    ga, gb = torch.autograd.grad(2.0 * got, (table_a, table_b))
    want = dense_info_nce(table_a[ids], table_b[ids], tau)
    wa, wb = torch.autograd.grad(2.0 * want, (table_a, table_b))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(ga, wa)
    torch.testing.assert_close(gb, wb)
    w = counts.double()
    assert torch.autograd.gradcheck(
        lambda x, y: info_nce(x, y, tau, w),
        (table_a[uniq].detach().requires_grad_(), table_b[uniq].detach().requires_grad_()),
    )
