"""Transcriptions of tml-epfl/sharpness-vs-generalization (commit 6d73be94eb88,
``sharpness.py`` and ``models.py``), the reference samtune's worst-case and
average-case measures are checked against. They do not call samtune.

Changed from the reference only where it cannot run here: tensors stay on the
CPU (the reference calls ``.cuda()``), batches are ``(x, y)`` pairs (its loaders
yield ``(x, _, y, _, _)``), printing, logging and the error rates are dropped,
and the random draws of ``random_init_lw`` can be supplied, so that a test can
give the reference the Gaussian draws samtune made (CPU normal draws of one flat
vector differ from per-tensor ones; uniform draws do not).
"""

import copy
import math

import torch
from torch import nn


class LogitNormalizationWrapper(nn.Module):
    """``models.py`` lines 251–264, as ``eval_sharpness.py`` line 61 applies it."""

    def __init__(self, model, normalize_logits=False):
        super().__init__()
        self.model = model
        self.normalize_logits = normalize_logits

    def forward(self, x):
        out = self.model(x)
        if self.normalize_logits:
            out = out - out.mean(dim=-1, keepdim=True)
            out_norms = out.norm(dim=-1, keepdim=True)
            out_norms = torch.max(out_norms, 10**-10 * torch.ones_like(out_norms))
            out = out / out_norms
        return out


def random_init_lw(delta_dict, rho, orig_param_dict, norm='l2', adaptive=False,
                   randn_like=torch.randn_like, rand_like=torch.rand_like):
    """``sharpness.py`` lines 42–55."""
    assert norm in ['l2', 'linf'], f'Unknown perturbation model {norm}.'

    for param in delta_dict:
        if norm == 'l2':
            delta_dict[param] = randn_like(delta_dict[param])
        elif norm == 'linf':
            delta_dict[param] = (2 * rand_like(delta_dict[param]) - 1)

    for param in delta_dict:
        param_norm_curr = orig_param_dict[param].abs() if adaptive else 1
        delta_dict[param] *= rho * param_norm_curr

    return delta_dict


def eval_average_sharpness(model, batches, loss_f, n_iters=100, rho=1., adaptive=False,
                           norm='l2', **draws):
    """``sharpness.py`` lines 320–397 (``eval_average_sharpness``): the objective only."""

    def get_loss(model, loss_fn, x, y):
        with torch.no_grad():
            return loss_fn(model(x), y).cpu().item()

    orig_param_dict = {param_name: p.clone() for param_name, p in model.named_parameters()}
    noisy_model = copy.deepcopy(model)
    delta_dict = {param_name: torch.zeros_like(param) for param_name, param in model.named_parameters()}
    n_batches, avg_loss, avg_init_loss = 0, 0., 0.
    with torch.no_grad():
        for x, y in batches:
            init_loss = get_loss(model, loss_f, x, y)
            avg_init_loss += init_loss
            batch_loss = 0.
            for _ in range(n_iters):
                delta_dict = random_init_lw(delta_dict, rho, orig_param_dict, norm=norm,
                                            adaptive=adaptive, **draws)
                for (param_name, delta), (_, param) in zip(  # noqa: B007 (as written)
                        delta_dict.items(), noisy_model.named_parameters()):
                    param.data = orig_param_dict[param_name] + delta_dict[param_name]
                batch_loss += get_loss(noisy_model, loss_f, x, y)
            n_batches += 1
            avg_loss += (batch_loss / n_iters)
    return (avg_loss - avg_init_loss) / n_batches


def _project_onto_ellipsoid(delta, orig, rho):
    """The adaptive l2 branch of ``weight_ascent_step_momentum`` (``sharpness.py``
    lines 124–145): bisection on the Lagrange multiplier, to |norm − ρ| ≤ 1e-5."""
    def weighted_norm(delta_dict):
        return sum([((delta_dict[p] / orig[p].abs())**2).sum() for p in delta_dict])**0.5

    lmbd = 0.1
    max_lmbd_limit = 10.0
    min_lmbd, max_lmbd = 0.0, max_lmbd_limit
    delta_tmp = {p: delta[p].clone() for p in delta}
    curr_norm = new_norm = weighted_norm(delta_tmp)
    if curr_norm > rho:
        while (new_norm - rho).abs() > 10**-5:
            curr_norm = new_norm
            for p in delta:
                c = 1 / orig[p].abs()
                delta_tmp[p] = delta[p] / (1 + 2 * lmbd * c**2)
            new_norm = weighted_norm(delta_tmp)
            if new_norm > rho:
                lmbd, min_lmbd = (lmbd + max_lmbd) / 2, lmbd
            else:
                lmbd, max_lmbd = (min_lmbd + lmbd) / 2, lmbd
            if (max_lmbd_limit - max_lmbd) < 10**-2:
                max_lmbd_limit, max_lmbd = max_lmbd_limit * 2, max_lmbd * 2
    return {p: delta_tmp[p].clone() for p in delta_tmp}


def reference_m_apgd(model, loss_f, batches, rho, n_iters, norm, adaptive):
    """``eval_APGD_sharpness`` with ``weight_ascent_step_momentum`` (``sharpness.py``
    lines 58–169 and 172–317; rand_init off, one restart): it writes the
    perturbation into the model, re-evaluates the loss after each step and
    reloads the best state dict when halving."""
    model.eval()
    p_, w_ = [0, 0.22], [0, math.ceil(n_iters * 0.22)]
    while w_[-1] < n_iters and w_[-1] != w_[-2]:
        p_.append(p_[-1] + max(p_[-1] - p_[-2] - 0.03, 0.06))
        w_.append(math.ceil(p_[-1] * n_iters))
    checkpoints = w_[1:]
    orig_state = copy.deepcopy(model.state_dict())
    orig = {p: p.detach().clone() for p in model.parameters()}
    scale = {p: (orig[p].abs() if adaptive else torch.ones_like(p)) for p in orig}

    def loss_now(x, y):
        with torch.no_grad():
            return loss_f(model(x), y).item()

    total = 0.0
    for x, y in batches:
        init_loss = loss_now(x, y)
        delta = {p: torch.zeros_like(p) for p in orig}
        prev = {p: d.clone() for p, d in delta.items()}
        worst_state = copy.deepcopy(model.state_dict())
        prev_worst = worst = init_loss
        step = prev_step = 2 * rho
        prev_cp, n_up = 0, 0
        for i in range(n_iters):
            backup = {p: d.clone() for p, d in delta.items()}
            model.zero_grad()
            loss_f(model(x), y).backward()
            with torch.no_grad():
                if norm == "l2":
                    gnorm = sum(p.grad.norm() ** 2 for p in orig) ** 0.5
                    for p in orig:
                        delta[p] += step / (gnorm + 1e-12) * p.grad * scale[p]
                    if adaptive:
                        delta = _project_onto_ellipsoid(delta, orig, rho)
                    else:
                        dnorm = sum((delta[p] ** 2).sum() for p in orig) ** 0.5
                        if dnorm > rho:
                            for p in orig:
                                delta[p] *= rho / dnorm
                else:
                    for p in orig:
                        delta[p] += step * p.grad.sign() * scale[p]
                        delta[p] = torch.max(torch.min(delta[p], scale[p] * rho),
                                             -scale[p] * rho)
                for p in orig:
                    delta[p] = 0.75 * delta[p] + 0.25 * prev[p]
                    p.data = orig[p] + delta[p]
                prev = backup
            current = loss_now(x, y)
            if current > worst:
                worst, worst_state, n_up = current, copy.deepcopy(model.state_dict()), n_up + 1
            if i in checkpoints:
                cond1 = n_up < 0.75 * (i - prev_cp)
                cond2 = prev_step == step and prev_worst == worst
                prev_step, prev_worst, prev_cp, n_up = step, worst, i, 0
                if cond1 or cond2:
                    step *= 0.5
                    model.load_state_dict(worst_state)
        total += worst - init_loss
        model.load_state_dict(orig_state)
    return total / len(batches)
