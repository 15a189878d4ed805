"""Guidance as composition: wrappers that turn models into the samplers' Denoiser / cond_fn.

* :func:`text2im_denoiser` binds a text-conditional U-Net to its prompts (text features computed
  once per sampling run) and, with ``guidance_scale != 1``, applies classifier-free guidance: one
  doubled batch per step, ``eps = eps_uncond + s * (eps_cond - eps_uncond)``, each half keeping
  its own variance channels (the conditional half's are returned).
* :func:`clip_cond_fn` is CLIP guidance with the noised CLIP (gradient of the image-text dot
  product, the official ``cond_fn``); :func:`classifier_cond_fn` guides with a noisy classifier.
  Pass either as ``cond_fn=`` to any sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .sampling._common import CondFn, Denoiser

Tensor = torch.Tensor


def check_guidance_scale(guidance_scale: float) -> float:
    guidance_scale = float(guidance_scale)
    if not guidance_scale >= 0:  # also rejects NaN
        raise ValueError(f"guidance scale must be >= 0 (1 = no guidance), got {guidance_scale}")
    return guidance_scale


def empty_prompt_tokens(model: nn.Module, batch: int, device=None) -> tuple[Tensor, Tensor]:
    """Tokens and mask of the empty caption (all padding), the unconditional input for CFG."""
    config = model.config
    device = device or next(model.parameters()).device
    tokens = torch.full((batch, config.text_ctx), config.n_vocab - 1, dtype=torch.long, device=device)
    return tokens, torch.zeros(batch, config.text_ctx, dtype=torch.bool, device=device)


def text2im_denoiser(
    model: nn.Module,
    tokens: Tensor,
    mask: Tensor,
    guidance_scale: float = 1.0,
    *,
    uncond_tokens: Tensor | None = None,
    uncond_mask: Tensor | None = None,
    **model_kwargs: Tensor | None,
) -> Denoiser:
    """A Denoiser for a Text2ImUNet, with classifier-free guidance when ``guidance_scale != 1``.

    tokens, mask: [B, text_ctx] for the B prompts. ``model_kwargs`` are the per-image extra
    inputs (``low_res`` [B,3,h,w], ``inpaint_image`` [B,3,H,W], ``inpaint_mask`` [B,1,H,W]).
    The unconditional input defaults to the empty caption. Scale 1 runs the conditional model
    alone (one forward per step); scale 0 gives the unconditional model.
    """
    guidance_scale = check_guidance_scale(guidance_scale)
    model_kwargs = {k: v for k, v in model_kwargs.items() if v is not None}
    batch = tokens.shape[0]
    guided = guidance_scale != 1.0
    if guided:
        if uncond_tokens is None:
            uncond_tokens, uncond_mask = empty_prompt_tokens(model, batch, tokens.device)
        tokens = torch.cat([tokens, uncond_tokens])
        mask = torch.cat([mask, uncond_mask])
        model_kwargs = {k: torch.cat([v, v]) for k, v in model_kwargs.items()}
    with torch.no_grad():
        text = model.encode_text(tokens, mask)

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        if not guided:
            return model(x, t, text=text, **model_kwargs)
        out = model(torch.cat([x, x]), torch.cat([t, t]), text=text, **model_kwargs)
        channels = x.shape[1]
        eps_cond, eps_uncond = out[:batch, :channels], out[batch:, :channels]
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        return torch.cat([eps, out[:batch, channels:]], dim=1)

    return denoise


def clip_cond_fn(clip_model: nn.Module, prompts: Sequence[str], grad_scale: float) -> CondFn:
    """CLIP guidance: ``grad_scale * d/dx [exp(logit_scale) * <z_text, z_image(x_t, t)>]``.

    The noised CLIP sees 64 px images, so use it with the base (64 px) stage.
    """
    return clip_model.cond_fn(list(prompts), check_guidance_scale(grad_scale))


def classifier_cond_fn(classifier: Callable[[Tensor, Tensor], Tensor], labels: Tensor, scale: float) -> CondFn:
    """Classifier guidance: ``scale * d/dx log p(y | x_t, t)`` for a noisy classifier.

    classifier(x_t, t) -> logits [N, classes]; labels: LongTensor [N].
    """
    scale = check_guidance_scale(scale)

    def cond_fn(x: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = torch.log_softmax(classifier(x_in, t).float(), dim=-1)
            selected = log_probs[torch.arange(len(x_in), device=x.device), labels.to(x.device)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale

    return cond_fn


def combine_cond_fns(*cond_fns: CondFn | None) -> CondFn | None:
    """Sum several guidance gradients (e.g. CLIP + classifier); ``None`` entries are skipped."""
    active = [fn for fn in cond_fns if fn is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]
    return lambda x, t: sum(fn(x, t) for fn in active)
