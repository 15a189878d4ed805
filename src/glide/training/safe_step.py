"""An AdamW step that never leaves a non-finite weight or optimizer state behind.

The trainer already skips steps whose loss or gradient is not finite; an update can still
overflow with finite gradients (an enormous learning rate, a tiny ``eps``, a state already near
the float32 limit). Restoring it exactly needs a copy of the weights and both Adam moments,
three times the weights' memory, so the copy is taken only when a cheap bound cannot rule out an
overflow: a few max-reductions per step bound every intermediate of the AdamW formula

    m' = b1 m + (1 - b1) g,   v' = b2 v + (1 - b2) g^2,
    p' = p (1 - lr wd) - lr / (1 - b1^t) * m' / (sqrt(v' / (1 - b2^t)) + eps),

using ``1 - b1^t >= 1 - b1`` and ``sqrt(.) + eps >= eps``. In ordinary training the bound sits
tens of orders of magnitude below the float32 limit and no copy is made.
"""

from __future__ import annotations

import torch

# Far below float32's max (3.4e38), so rounding inside the fused kernel cannot cross it.
_SAFE_LIMIT = 1e36


def safe_step(optimizer: torch.optim.AdamW, scaler: torch.amp.GradScaler) -> bool:
    """``scaler.step(optimizer)``; False, with weights and state as before, if the update was not finite."""
    if update_is_bounded(optimizer):
        scaler.step(optimizer)
        return True
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    saved = [(p.detach().clone(), {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()})
             for p in params]
    scaler.step(optimizer)
    if all_finite(params, optimizer):
        return True
    with torch.no_grad():
        for p, (weights, state) in zip(params, saved, strict=True):
            p.copy_(weights)
            if state:
                optimizer.state[p] = state
            else:  # the step created the state: the first step starts again from none
                optimizer.state.pop(p, None)
    return False


def update_is_bounded(optimizer: torch.optim.AdamW) -> bool:
    """True when no weight, moment or intermediate of the next AdamW step can exceed ``_SAFE_LIMIT``."""
    groups, maxima = [], []
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        states = [optimizer.state[p] for p in params if optimizer.state[p]]
        if params:
            groups.append(group)
            device = params[0].device
            maxima += [_max_abs([p.grad for p in params], device), _max_abs(params, device),
                       _max_abs([s["exp_avg"] for s in states], device),
                       _max_abs([s["exp_avg_sq"] for s in states], device)]
    if not groups:
        return True
    values = torch.stack(maxima).tolist()  # one device sync per step
    for i, group in enumerate(groups):
        g, p, m, v = values[4 * i: 4 * i + 4]
        beta1, beta2 = group["betas"]
        lr, eps, decay = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        m_next = beta1 * m + (1 - beta1) * g
        v_next = beta2 * v + (1 - beta2) * g * g
        ratio = m_next / eps  # bounds |m' / (sqrt(v' / bc2) + eps)|
        p_next = p * abs(1 - lr * decay) + lr / (1 - beta1) * ratio
        if not max(g * g, m_next, v_next / (1 - beta2), ratio, p_next) < _SAFE_LIMIT:  # NaN fails too
            return False
    return True


def all_finite(params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> bool:
    tensors = list(params) + [v for p in params for v in optimizer.state[p].values() if torch.is_tensor(v)]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _max_abs(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """max |x| over the tensors as a 0-d float32 tensor (0 for none), without a device sync."""
    if not tensors:
        return torch.zeros((), device=device)
    return torch.stack(torch._foreach_norm([t.detach() for t in tensors], float("inf"))).max().float().to(device)
