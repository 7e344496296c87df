"""The V-MoE routing and mixture-of-experts layer, against hand-computed cases and a naive loop."""

from __future__ import annotations

import math

import pytest
import torch

from open_buildings.errors import ConfigError
from open_buildings.models.moe import (
    MoEMlp,
    expert_capacity,
    importance_loss,
    load_loss,
    route,
)
from open_buildings.models.vit import Block, ViTConfig

DISPATCH = ["index", "einsum"]


def _gates(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 2).softmax(dim=-1)


def _layer(
    dispatch: str = "index", seed: int = 0, num_experts: int = 4, k: int = 2, **kwargs
) -> MoEMlp:
    torch.manual_seed(seed)
    layer = MoEMlp(8, 16, num_experts, k, dispatch=dispatch, **kwargs)
    with torch.no_grad():  # a sharper router than the 0.02 init, so routing is not near-uniform
        layer.router.normal_(0.0, 1.0)
        layer.b1.normal_(0.0, 0.1)
        layer.b2.normal_(0.0, 0.1)
    return layer


def test_expert_capacity_formula() -> None:
    assert expert_capacity(1024, 8, 2, 1.0) == 256  # ViT-S/16 at 512 px, per image
    assert expert_capacity(1024, 8, 2, 0.5) == 128
    assert expert_capacity(16, 4, 2, 1.05) == 8  # round(8.4)
    assert expert_capacity(10, 4, 1, 1.0) == 2  # round(2.5) rounds half to even, as jnp.round
    assert expert_capacity(4, 4, 2, 10.0) == 4  # never more than the group's tokens
    assert expert_capacity(4, 8, 1, 0.1) == 1  # never empty


@pytest.mark.parametrize("batch_priority", [True, False])
def test_no_expert_exceeds_its_capacity(batch_priority: bool) -> None:
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        groups, tokens = int(torch.randint(1, 4, (1,), generator=g)), 7 + seed
        experts = int(torch.randint(2, 9, (1,), generator=g))
        k = int(torch.randint(1, min(experts, 3) + 1, (1,), generator=g))
        factor = float(torch.empty(1).uniform_(0.1, 2.0, generator=g))
        capacity = expert_capacity(tokens, experts, k, factor)
        r = route(
            _gates(groups, tokens, experts, seed=seed), k, capacity, batch_priority=batch_priority
        )
        for grp in range(groups):
            for e in range(experts):
                chose = r.expert[grp] == e
                slots = sorted(r.slot[grp][chose & (r.slot[grp] >= 0)].tolist())
                assert len(slots) <= capacity
                # the buffer fills from the front with no gaps or repeats ...
                assert slots == list(range(len(slots)))
                # ... and only a full expert turns a choice away
                assert len(slots) == min(capacity, int(chose.sum()))


def test_batch_prioritized_routing_hand_computed() -> None:
    # 4 tokens, 3 experts, top-2, capacity 2. Top gates: a 0.4, b 0.5, c 0.6, d 0.7.
    gates = torch.tensor(
        [
            [0.40, 0.35, 0.25],  # a: e0, e1
            [0.50, 0.30, 0.20],  # b: e0, e1
            [0.60, 0.10, 0.30],  # c: e0, e2
            [0.20, 0.70, 0.10],  # d: e1, e0
        ]
    )[None]
    # BPR serves first choices in the order d, c, b, a: d->e1.0, c->e0.0, b->e0.1, a->e0 full;
    # then second choices: d->e0 full, c->e2.0, b->e1.1, a->e1 full. The least confident token
    # (a) is the one dropped entirely.
    bpr = route(gates, 2, 2, batch_priority=True)
    assert bpr.expert[0].tolist() == [[0, 1], [0, 1], [0, 2], [1, 0]]
    assert bpr.slot[0].tolist() == [[-1, -1], [1, 1], [0, 0], [0, -1]]
    # Vanilla routing serves tokens in their order: a->e0.0, b->e0.1, c->e0 full, d->e1.0;
    # then a->e1.1, b->e1 full, c->e2.0, d->e0 full.
    vanilla = route(gates, 2, 2, batch_priority=False)
    assert vanilla.slot[0].tolist() == [[0, 1], [1, -1], [-1, 0], [0, -1]]


def test_bpr_keeps_exactly_the_most_confident_tokens() -> None:
    # Six tokens all prefer expert 0 (top-1); capacity 3 keeps the three largest gates.
    top = torch.tensor([0.60, 0.90, 0.70, 0.95, 0.55, 0.80])
    gates = torch.stack([top, 1 - top], dim=-1)[None]
    r = route(gates, 1, 3)
    assert r.slot[0, :, 0].tolist() == [-1, 1, -1, 0, -1, 2]  # 0.95, 0.90, 0.80 in that order
    for seed in range(20):  # and on random gates: no dropped token outranks a kept one
        gates = _gates(1, 50, 4, seed=seed)
        r = route(gates, 1, expert_capacity(50, 4, 1, 0.6))
        for e in range(4):
            mine = r.expert[0, :, 0] == e
            kept = r.gate[0, :, 0][mine & (r.slot[0, :, 0] >= 0)]
            dropped = r.gate[0, :, 0][mine & (r.slot[0, :, 0] < 0)]
            if len(dropped):
                assert kept.min() > dropped.max()


@pytest.mark.parametrize("dispatch", DISPATCH)
def test_a_dropped_token_passes_through_the_residual_unchanged(dispatch: str) -> None:
    torch.manual_seed(0)
    block = Block(ViTConfig(width=8, depth=1, mlp_dim=16, heads=2))
    block.mlp = _layer(dispatch, capacity_factor_eval=0.3)
    block.eval()
    x = torch.randn(2, 12, 8)
    with torch.no_grad():
        after_attention = x + block.attn(block.norm1(x))
        out = block(x)
    dropped = (block.mlp.last_routing.slot < 0).all(dim=-1)  # (groups=images, tokens)
    assert 0 < int(dropped.sum()) < dropped.numel()
    assert torch.equal(out[dropped], after_attention[dropped])
    assert not torch.isclose(out[~dropped], after_attention[~dropped]).all(dim=-1).any()


@pytest.mark.parametrize("dispatch", DISPATCH)
def test_gradients_reach_exactly_the_experts_that_got_tokens(dispatch: str) -> None:
    layer = _layer(dispatch, num_experts=8, k=1).train()
    x = torch.randn(1, 3, 8, requires_grad=True)
    layer(x).square().sum().backward()
    r = layer.last_routing
    received = {int(e) for e in r.expert[r.slot >= 0]}
    assert 0 < len(received) <= 3 < 8
    for e in range(8):
        for name in ("w1", "b1", "w2", "b2"):
            grad = getattr(layer, name).grad[e]
            assert bool(grad.abs().sum() > 0) == (e in received), (name, e)
    assert layer.router.grad.abs().sum() > 0  # through the combine weights
    assert x.grad.abs().sum() > 0


def _naive_moe(layer: MoEMlp, x: torch.Tensor) -> torch.Tensor:
    """Route and run the experts one token at a time, as the paper's algorithm reads."""
    batch, n, width = x.shape
    out = torch.zeros_like(x)
    for first in range(0, batch, layer.group_size):
        tokens = [(i, t) for i in range(first, first + layer.group_size) for t in range(n)]
        capacity = min(
            len(tokens),
            max(1, round(layer.k * layer.capacity_factor_eval * len(tokens) / layer.num_experts)),
        )
        choices = {}
        for i, t in tokens:
            logits = [float(x[i, t] @ layer.router[e]) for e in range(layer.num_experts)]
            z = sum(math.exp(v) for v in logits)
            gates = [math.exp(v) / z for v in logits]
            choices[i, t] = sorted(range(layer.num_experts), key=lambda e: -gates[e])[: layer.k]
            choices[i, t] = [(e, gates[e]) for e in choices[i, t]]
        if layer.batch_priority:
            order = sorted(tokens, key=lambda it: -choices[it][0][1])
        else:
            order = tokens
        load = [0] * layer.num_experts
        for j in range(layer.k):
            for i, t in order:
                e, gate = choices[i, t][j]
                if load[e] < capacity:
                    load[e] += 1
                    h = layer.act(x[i, t] @ layer.w1[e] + layer.b1[e, 0])
                    out[i, t] += gate * (h @ layer.w2[e] + layer.b2[e, 0])
    return out


@pytest.mark.parametrize("dispatch", DISPATCH)
@pytest.mark.parametrize(
    ("group_size", "factor", "batch_priority"),
    [(1, 0.5, True), (2, 0.5, True), (4, 0.7, True), (2, 0.5, False), (2, 2.0, True)],
)
def test_routing_groups_match_a_naive_per_token_loop(
    dispatch: str, group_size: int, factor: float, batch_priority: bool
) -> None:
    layer = _layer(
        dispatch,
        group_size=group_size,
        capacity_factor_eval=factor,
        batch_priority=batch_priority,
    ).eval()
    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = layer(x)
        slow = _naive_moe(layer, x)
    assert fast.shape == x.shape
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_per_image_groups_do_not_depend_on_the_batch() -> None:
    layer = _layer(group_size=1, capacity_factor_eval=0.5).eval()
    x = torch.randn(3, 10, 8)
    with torch.no_grad():
        together = layer(x)
        alone = torch.cat([layer(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone)


def test_a_batch_that_does_not_split_into_groups_is_a_clear_error() -> None:
    layer = _layer(group_size=2)
    with pytest.raises(ValueError, match="multiple of group_size"):
        layer(torch.randn(3, 4, 8))


def test_importance_loss_by_hand() -> None:
    # gates: token 0 (1/4, 3/4), token 1 (1/2, 1/2) -> importance (0.75, 1.25): mean 1, var 1/16
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    assert float(importance_loss(logits)) == pytest.approx(0.0625, rel=1e-6)
    # equal importance -> 0; two groups are averaged
    two = torch.cat([logits, torch.zeros(1, 2, 2)])
    assert float(importance_loss(two)) == pytest.approx(0.0625 / 2, rel=1e-6)


def test_load_loss_by_hand() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    noisy = torch.tensor([[[0.2, 1.0], [0.3, -0.1]]])
    std = 0.5

    def phi(z: float) -> float:
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    # k=1: the threshold is each token's largest noisy logit (1.0, 0.3)
    p = [[phi((0.0 - 1.0) / std), phi((math.log(3) - 1.0) / std)], [phi(-0.6), phi(-0.6)]]
    mean = [(p[0][e] + p[1][e]) / 2 for e in range(2)]
    mu = sum(mean) / 2
    expected = sum((m - mu) ** 2 for m in mean) / 2 / mu**2
    assert expected == pytest.approx(0.2335, abs=1e-4)  # Phi(-2)=0.02275, Phi(0.1972)=0.5782
    assert float(load_loss(logits, noisy, std, 1)) == pytest.approx(expected, rel=1e-5)
    # k=2 of 2 experts: the threshold is the smaller noisy logit (0.2, -0.1)
    p2 = [[phi(-0.4), phi((math.log(3) - 0.2) / std)], [phi(0.2), phi(0.2)]]
    mean2 = [(p2[0][e] + p2[1][e]) / 2 for e in range(2)]
    mu2 = sum(mean2) / 2
    expected2 = sum((m - mu2) ** 2 for m in mean2) / 2 / mu2**2
    assert float(load_loss(logits, noisy, std, 2)) == pytest.approx(expected2, rel=1e-5)


def test_training_sets_the_weighted_aux_loss_and_eval_clears_it() -> None:
    layer = _layer(importance_weight=0.3, load_weight=0.0).train()
    x = torch.randn(2, 5, 8)
    layer(x)
    expected = 0.3 * importance_loss(layer.router_logits(x.reshape(2, 5, 8)))
    torch.testing.assert_close(layer.last_aux_loss, expected)
    layer.load_weight = 0.2
    layer(x)
    assert float(layer.last_aux_loss.detach()) > float(expected.detach())  # the load loss is added
    layer.eval()
    layer(x)
    assert layer.last_aux_loss is None


def test_gate_noise_has_std_one_over_e_in_training_only() -> None:
    layer = _layer(num_experts=4, capacity_factor_train=4.0).train()
    assert layer.noise_std == 0.25
    x = torch.randn(1, 6, 8)
    torch.manual_seed(5)
    noise = torch.randn(1, 6, 4) * 0.25
    torch.manual_seed(5)
    layer(x)
    clean = layer.router_logits(x)
    expected = (clean + noise).softmax(dim=-1).topk(2, dim=-1)
    torch.testing.assert_close(layer.last_routing.gate, expected.values)
    assert torch.equal(layer.last_routing.expert, expected.indices)
    layer(x)
    assert not torch.equal(layer.last_routing.gate, expected.values)  # fresh noise each call
    layer.eval()
    with torch.no_grad():
        first = layer(x)
        gates = layer.last_routing.gate
        assert torch.equal(first, layer(x))  # deterministic
    torch.testing.assert_close(gates, clean.softmax(dim=-1).topk(2, dim=-1).values)


def test_bad_layer_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="k <= num_experts"):
        MoEMlp(8, 16, 2, 3)
    with pytest.raises(ConfigError, match="capacity_factor_eval must be a positive"):
        MoEMlp(8, 16, 4, 2, capacity_factor_eval=0.0)
    with pytest.raises(ConfigError, match="group_size"):
        MoEMlp(8, 16, 4, 2, group_size=0)
    with pytest.raises(ConfigError, match="dispatch"):
        MoEMlp(8, 16, 4, 2, dispatch="sparse")
