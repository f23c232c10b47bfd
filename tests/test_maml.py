"""The PPO-MAML meta-objective: exact meta-gradients, vmap over tasks, step structure.

The data of every test is fixed (as if sampled once). The meta-objective differentiated is
``J(theta) = meta_loss(theta; fixed data)``, where the fixed data include every stored
sampling log-prob: ``pre[k].logp = log pi_{theta0_k}`` (theta0 adapted k times) and
``post.logp = log pi_{theta0_K}``. So at ``theta0`` every likelihood ratio is 1 and J is the
meta-objective there, and ``grad J(theta0)`` is the LVC meta-gradient estimate. The
finite differences perturb theta with the same stored log-probs: recomputing them at every
theta would define a different function (it drops the sampling-distribution terms that
are the point of the LVC/DiCE objectives).
"""

import math

import pytest
import torch
from torch.func import vmap

from metarobot.algos import maml, reptile
from metarobot.core import inner
from metarobot.core.advantages import compute_advantages
from metarobot.core.batch import EpisodeBatch
from metarobot.core.policy import GaussianMLPPolicy, ParamLayout, log_prob, policy_forward

NUM_TASKS, EPISODES, HORIZON, OBS_DIM, ACT_DIM = 2, 3, 5, 3, 2
INNER_LR = 0.1


def tiny_model():
    torch.manual_seed(0)
    model = GaussianMLPPolicy(OBS_DIM, ACT_DIM, hidden=(4,), init_log_std=-0.3).double()
    # A non-trivial last layer (the default init is ~0) so every parameter matters.
    with torch.no_grad():
        model.mean_net[-1].weight.normal_(0.0, 0.5)
    return model


def sample_batch(model, task_params, seed):
    """Episodes of NUM_TASKS tasks; ``logp`` is the log-prob under ``task_params`` (stacked)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (NUM_TASKS, EPISODES, HORIZON)
    obs = torch.randn(*shape, OBS_DIM, generator=gen, dtype=torch.float64)
    act = torch.randn(*shape, ACT_DIM, generator=gen, dtype=torch.float64)
    rew = torch.randn(*shape, generator=gen, dtype=torch.float64)
    lengths = torch.randint(2, HORIZON + 1, shape[:2], generator=gen)
    mask = (torch.arange(HORIZON) < lengths[..., None]).to(torch.float64)
    with torch.no_grad():
        logp = vmap(lambda p, o, a: log_prob(model, p, o, a))(task_params, obs, act)
    batch = EpisodeBatch(obs, act, rew, mask, logp, torch.zeros(shape[:2], dtype=torch.float64))
    return batch, compute_advantages(obs, rew, mask)[0]


def stacked(params):
    return {k: v.detach().expand(NUM_TASKS, *v.shape) for k, v in params.items()}


def make_problem(model, params, num_steps, loss_name, lr=INNER_LR):
    """ProMP data: step k's batch sampled with the k-times adapted policy, then post data."""
    pre, advs = [], []
    for k in range(num_steps):
        if k == 0:
            sampling = stacked(params)
        else:
            sampling, _, _ = maml.adapt(model, params, pre, advs, lr, k, loss_name)
        batch, adv = sample_batch(model, {n: v.detach() for n, v in sampling.items()}, 10 + k)
        pre.append(batch)
        advs.append(adv)
    adapted, _, _ = maml.adapt(model, params, pre, advs, lr, num_steps, loss_name)
    post, post_adv = sample_batch(model, {n: v.detach() for n, v in adapted.items()}, 99)
    return pre, advs, post, post_adv


def central_difference(fn, x, h=1e-6):
    out = torch.empty_like(x)
    for i in range(x.numel()):
        step = torch.zeros_like(x)
        step[i] = h
        out[i] = (fn(x + step) - fn(x - step)) / (2 * h)
    return out


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("loss_name", ["lvc", "vpg", "dice"])
@pytest.mark.parametrize("num_steps", [1, 2])
def test_meta_gradient_matches_finite_differences(num_steps, loss_name):
    model = tiny_model()
    params = model.init_params()
    layout = ParamLayout.of(params)
    pre, advs, post, post_adv = make_problem(model, params, num_steps, loss_name)
    theta0 = layout.flatten(params).detach()
    # old_params away from theta0 so the KL penalty's gradient is not zero.
    old_params = layout.unflatten(theta0 + 0.05 * torch.randn(theta0.shape, dtype=theta0.dtype))

    def objective(flat):
        loss, _ = maml.meta_loss(model, layout.unflatten(flat), old_params, pre, advs, post,
                                 post_adv, INNER_LR, num_steps, eta=0.7, inner_loss=loss_name)
        return loss

    theta = theta0.clone().requires_grad_(True)
    (meta_grad,) = torch.autograd.grad(objective(theta), theta)
    with torch.no_grad():
        numeric = central_difference(objective, theta0)
    assert meta_grad.norm() > 1e-3
    assert rel_err(meta_grad, numeric) < 1e-6


def test_meta_sgd_learning_rate_gradient_matches_finite_differences():
    model = tiny_model()
    params = model.init_params()
    layout = ParamLayout.of(params)
    gen = torch.Generator().manual_seed(3)
    lr0 = {k: 0.1 + 0.4 * torch.rand(v.shape, generator=gen, dtype=torch.float64)
           for k, v in params.items()}
    pre, advs, post, post_adv = make_problem(model, params, 2, "lvc", lr=lr0)
    theta0 = torch.cat([layout.flatten(params).detach(), layout.flatten(lr0)])

    def objective(flat):
        theta, lr = layout.unflatten(flat[:layout.size]), layout.unflatten(flat[layout.size:])
        loss, _ = maml.meta_loss(model, theta, params, pre, advs, post, post_adv, lr, 2,
                                 eta=1.0)
        return loss

    x = theta0.clone().requires_grad_(True)
    (meta_grad,) = torch.autograd.grad(objective(x), x)
    with torch.no_grad():
        numeric = central_difference(objective, theta0)
    assert meta_grad[layout.size:].norm() > 1e-4  # the learning rates do get a gradient
    assert rel_err(meta_grad, numeric) < 1e-6


@pytest.mark.parametrize("loss_name", ["lvc", "dice"])
def test_vmap_over_tasks_equals_python_loop(loss_name):
    model = tiny_model()
    params = model.init_params()
    pre, advs, post, post_adv = make_problem(model, params, 2, loss_name)
    adapted, losses, kls = maml.adapt(model, params, pre, advs, INNER_LR, 2, loss_name)
    outer, _ = maml.outer_loss(model, adapted, post, post_adv, clip=0.3)
    (grad_vmap,) = torch.autograd.grad(outer, params["mean_net.0.weight"])

    loop_outer = 0.0
    for i in range(NUM_TASKS):
        p = dict(params)
        for k in range(2):
            batch = maml.batch_to_inner(pre[k], advs[k])
            task_batch = inner.InnerBatch(*(t[i] for t in batch))
            if loss_name == "lvc":
                p, loss, kl = inner.inner_step(model, p, task_batch, INNER_LR)
            else:
                p, loss, kl = inner.inner_step(
                    model, p, task_batch, INNER_LR,
                    loss_fn=lambda q, b=task_batch: inner.dice_loss(model, q, b, HORIZON))
            assert torch.allclose(loss, losses[k, i], atol=1e-10)
            assert torch.allclose(kl, kls[k, i], atol=1e-10)
        for name in params:
            assert torch.allclose(p[name], adapted[name][i], atol=1e-10)
        post_inner = maml.batch_to_inner(post, post_adv)
        task_loss, _ = inner.inner_loss(model, p, inner.InnerBatch(*(t[i] for t in post_inner)),
                                        0.3)
        loop_outer = loop_outer + task_loss / NUM_TASKS
    (grad_loop,) = torch.autograd.grad(loop_outer, params["mean_net.0.weight"])
    assert torch.allclose(outer, loop_outer, atol=1e-10)
    assert grad_vmap.norm() > 1e-3
    assert torch.allclose(grad_vmap, grad_loop, atol=1e-10)


def test_ratio_is_one_at_sampling_params():
    model = tiny_model()
    params = model.init_params()
    pre, advs, post, post_adv = make_problem(model, params, 2, "lvc")
    _, stats = maml.meta_loss(model, params, params, pre, advs, post, post_adv, INNER_LR, 2,
                              eta=1.0)
    # Every stored log-prob was taken at theta0 adapted k times: all KLs are 0 ...
    for key in ("inner_kl_0", "inner_kl_1", "outer_kl", "kl_penalty", "clip_frac"):
        assert abs(stats[key]) < 1e-12, key
    # ... and each surrogate is -(mean advantage) (0 after per-task normalisation).
    assert abs(stats["inner_loss_0"]) < 1e-12 and abs(stats["outer_loss"]) < 1e-12
    # Away from theta0 the ratio is no longer 1.
    moved = {k: v + 0.1 for k, v in params.items()}
    _, moved_stats = maml.meta_loss(model, moved, params, pre, advs, post, post_adv, INNER_LR,
                                    2, eta=1.0)
    assert moved_stats["inner_kl_0"] > 1e-4 and moved_stats["kl_penalty"] > 1e-4


def test_likelihood_ratio_gradient_equals_vpg_at_old_params():
    model = tiny_model()
    params = model.init_params()
    pre, advs, _, _ = make_problem(model, params, 1, "lvc")
    batch = maml.batch_to_inner(pre[0], advs[0])
    task = inner.InnerBatch(*(t[0] for t in batch))
    grads_vpg = torch.autograd.grad(inner.vpg_loss(model, params, task)[0], list(params.values()))
    for clip in (math.inf, 0.2):
        lr_loss, _ = inner.inner_loss(model, params, task, clip)
        grads_lr = torch.autograd.grad(lr_loss, list(params.values()))
        for a, b in zip(grads_lr, grads_vpg):
            assert torch.allclose(a, b, atol=1e-12)
    assert sum(g.norm() for g in grads_vpg) > 1e-3


def test_clipped_outer_loss_has_unclipped_gradient_at_ratio_one():
    model = tiny_model()
    params = model.init_params()
    pre, advs, post, post_adv = make_problem(model, params, 1, "lvc")

    def outer_grads(post_batch, clip):
        adapted, _, _ = maml.adapt(model, params, pre, advs, INNER_LR, 1)
        loss, _ = maml.outer_loss(model, adapted, post_batch, post_adv, clip)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))])

    clipped, unclipped = outer_grads(post, 0.3), outer_grads(post, math.inf)
    assert unclipped.norm() > 1e-3
    assert torch.allclose(clipped, unclipped, atol=1e-12)
    # Off-policy by a log-ratio of -0.5 (ratio 0.61 < 0.7) the clip does bite.
    shifted = post._replace(logp=post.logp + 0.5)
    assert not torch.allclose(outer_grads(shifted, 0.3), outer_grads(shifted, math.inf),
                              atol=1e-6)


@pytest.mark.parametrize("loss_name", ["lvc", "vpg", "dice"])
@pytest.mark.parametrize("meta_sgd", [False, True])
def test_configured_inner_lr_is_applied(loss_name, meta_sgd):
    model = tiny_model()
    params = model.init_params()
    pre, advs, _, _ = make_problem(model, params, 1, loss_name)
    gen = torch.Generator().manual_seed(5)
    lr = ({k: torch.rand(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
          if meta_sgd else 0.37)
    adapted, _, _ = maml.adapt(model, params, pre, advs, lr, 1, loss_name)
    batch = maml.batch_to_inner(pre[0], advs[0])
    for i in range(NUM_TASKS):
        task = inner.InnerBatch(*(t[i] for t in batch))
        if loss_name == "lvc":
            loss, _ = inner.inner_loss(model, params, task, math.inf)
        elif loss_name == "vpg":
            loss, _ = inner.vpg_loss(model, params, task)
        else:
            loss, _ = inner.dice_loss(model, params, task, HORIZON)
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        for k in params:
            rate = lr[k] if meta_sgd else lr
            assert torch.allclose(adapted[k][i] - params[k], -rate * grads[k], atol=1e-12)
        assert sum(g.norm() for g in grads.values()) > 1e-3


def test_inner_step_with_explicit_loss_is_the_default_step():
    model = tiny_model()
    params = model.init_params()
    pre, advs, _, _ = make_problem(model, params, 1, "lvc")
    task = inner.InnerBatch(*(t[0] for t in maml.batch_to_inner(pre[0], advs[0])))
    moved = {k: v + 0.05 for k, v in params.items()}  # ratio != 1, so the clip matters
    for first_order in (False, True):
        a = inner.inner_step(model, moved, task, 0.2, clip=0.1, first_order=first_order)
        b = inner.inner_step(model, moved, task, 0.2, first_order=first_order,
                             loss_fn=lambda q: inner.inner_loss(model, q, task, 0.1))
        for name in params:
            assert torch.equal(a[0][name], b[0][name])
        assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


def test_first_order_gradient_drops_inner_curvature():
    model = tiny_model()
    params = model.init_params()
    pre, advs, post, post_adv = make_problem(model, params, 2, "lvc")
    names = list(params)

    def meta_grad(first_order):
        adapted, _, _ = maml.adapt(model, params, pre, advs, INNER_LR, 2,
                                   first_order=first_order)
        loss, _ = maml.outer_loss(model, adapted, post, post_adv)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))])

    # Reference: the same two steps per task with each inner gradient detached by hand.
    loss = 0.0
    for i in range(NUM_TASKS):
        p = dict(params)
        for k in range(2):
            task = inner.InnerBatch(*(t[i] for t in maml.batch_to_inner(pre[k], advs[k])))
            step_loss, _ = inner.inner_loss(model, p, task, math.inf)
            grads = torch.autograd.grad(step_loss, [p[n] for n in names])  # no create_graph
            p = {n: p[n] - INNER_LR * g for n, g in zip(names, grads)}
        post_task = inner.InnerBatch(*(t[i] for t in maml.batch_to_inner(post, post_adv)))
        loss = loss + inner.inner_loss(model, p, post_task, 0.3)[0] / NUM_TASKS
    detached = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))])

    first_order, second_order = meta_grad(True), meta_grad(False)
    assert torch.allclose(first_order, detached, atol=1e-12)
    assert rel_err(first_order, second_order) > 1e-2


def test_kl_penalty_is_the_closed_form_gaussian_kl():
    model = tiny_model()
    params = model.init_params()
    pre, _, _, _ = make_problem(model, params, 1, "lvc")
    old = {k: v.detach() for k, v in params.items()}
    new = {k: (v + 0.1 * torch.randn_like(v)).requires_grad_(True) for k, v in old.items()}
    kl = maml.kl_penalty(model, new, old, pre[0])
    mean_o, log_std_o = policy_forward(model, old, pre[0].obs)
    mean_n, log_std_n = policy_forward(model, new, pre[0].obs)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean_o, log_std_o.exp()),
        torch.distributions.Normal(mean_n, log_std_n.exp())).sum(-1)
    mask = pre[0].mask
    assert kl.item() > 1e-4
    assert torch.allclose(kl, (reference * mask).sum() / mask.sum(), atol=1e-12)
    # Zero with zero gradient at theta == theta_old.
    same = {k: v.clone().requires_grad_(True) for k, v in old.items()}
    kl_same = maml.kl_penalty(model, same, old, pre[0])
    grads = torch.autograd.grad(kl_same, list(same.values()))
    assert abs(kl_same.item()) < 1e-12 and all(g.abs().max() < 1e-12 for g in grads)


def test_update_eta():
    assert maml.update_eta(1.0, 0.02, 0.01) == 2.0
    assert maml.update_eta(1.0, 0.005, 0.01) == 0.5
    assert maml.update_eta(1.0, 0.01, 0.01) == 1.0
    assert maml.update_eta(1.0, 0.015, 0.01) == 1.0  # boundaries keep eta
    assert maml.update_eta(1.0, 0.01 / 1.5, 0.01) == 1.0
    assert maml.update_eta(0.25, 0.0, 0.01) == 0.125
    with pytest.raises(ValueError):
        maml.update_eta(1.0, 0.01, 0.0)


def test_reptile_moves_toward_mean_of_adapted_params():
    model = tiny_model()
    params = model.init_params()
    pre, advs, _, _ = make_problem(model, params, 1, "lvc")
    adapted, _, _ = maml.adapt(model, params, pre, advs, INNER_LR, 3, first_order=True,
                               clip=0.2)
    for eps in (0.25, 1.0):
        new = reptile.reptile_update(params, adapted, eps)
        for k in params:
            target = adapted[k].mean(0)
            assert torch.allclose(new[k] - params[k], eps * (target - params[k]), atol=1e-12)
            assert torch.allclose((new[k] - target).norm(),
                                  (1 - eps) * (params[k] - target).norm(), atol=1e-12)
            assert new[k].is_leaf and new[k].requires_grad
        assert any((params[k] - adapted[k].mean(0)).norm() > 1e-3 for k in params)
    with pytest.raises(ValueError):
        reptile.reptile_update(params, adapted, 0.0)


def test_bad_arguments_raise():
    model = tiny_model()
    params = model.init_params()
    pre, advs, post, post_adv = make_problem(model, params, 2, "lvc")
    with pytest.raises(ValueError, match="num_steps"):
        maml.adapt(model, params, pre, advs, INNER_LR, 3)
    with pytest.raises(ValueError, match="inner_loss"):
        maml.adapt(model, params, pre, advs, INNER_LR, 2, inner_loss="ppo")
    with pytest.raises(ValueError, match="clip"):
        maml.adapt(model, params, pre, advs, INNER_LR, 2, inner_loss="vpg", clip=0.2)
    with pytest.raises(ValueError, match="Meta-SGD"):
        maml.adapt(model, params, pre, advs, {"log_std": 0.1}, 2)
    with pytest.raises(ValueError, match="adv"):
        maml.batch_to_inner(post, post_adv[:, :, :-1])


def test_inner_losses_differ_in_their_second_order_terms():
    model = tiny_model()
    params = model.init_params()
    pre, advs, post, post_adv = make_problem(model, params, 1, "lvc")

    def adapt_and_meta_grad(loss_name):
        adapted, _, _ = maml.adapt(model, params, pre, advs, INNER_LR, 1, loss_name)
        loss, _ = maml.outer_loss(model, adapted, post, post_adv)
        grads = torch.autograd.grad(loss, list(params.values()))
        return adapted, torch.cat([g.reshape(-1) for g in grads])

    (adapted_lvc, lvc), (adapted_vpg, vpg) = adapt_and_meta_grad("lvc"), adapt_and_meta_grad("vpg")
    _, dice = adapt_and_meta_grad("dice")
    # LVC and VPG take the same first inner step (ratio 1) but differ in its curvature: LVC
    # has the sampling-distribution term that VPG lacks. DiCE's inner gradient differs too.
    for k in params:
        assert torch.allclose(adapted_lvc[k], adapted_vpg[k], atol=1e-12)
    assert rel_err(vpg, lvc) > 1e-2 and rel_err(dice, lvc) > 1e-2
