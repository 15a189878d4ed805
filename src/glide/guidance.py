"""Guidance as composition: wrappers that turn models into the samplers' Denoiser / cond_fn.

* :func:`text2im_denoiser` binds a text-conditional U-Net to its prompts (text features computed
  once per sampling run) and, with ``guidance_scale != 1``, applies classifier-free guidance: one
  doubled batch per step, ``eps = eps_uncond + s * (eps_cond - eps_uncond)``, each half keeping
  its own variance channels (the conditional half's are returned).
* :func:`clip_cond_fn` is CLIP guidance with the noised CLIP (gradient of the image-text dot
  product, the official ``cond_fn``); :func:`classifier_cond_fn` guides with a noisy classifier.
  Pass either as ``cond_fn=`` to any sampler; :func:`combine_cond_fns` sums several.
* :class:`ClipGuidance` and :class:`ClassifierGuidance` are the same gradients for a pipeline's
  ``cond_fns=(...)``: the pipeline binds them to its prompts (:func:`bind_cond_fns`), and they
  stack with classifier-free guidance (``guidance_scale``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .bounds import check_number
from .sampling._common import CondFn, Denoiser

Tensor = torch.Tensor


def check_guidance_scale(guidance_scale: float, name: str = "guidance_scale") -> float:
    """A classifier-free guidance scale: finite and >= 0 (1 = the conditional model alone)."""
    return float(check_number(name, guidance_scale, low=0))


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


def clip_cond_fn(clip_model: nn.Module, prompts: Sequence[str], grad_scale: float) -> CondFn | None:
    """CLIP guidance for ``prompts`` (one per image, or one for all): see :func:`clip_cond_fn_from_tokens`.
    The prompts are tokenised and embedded once, here."""
    tokens, lens = clip_model.tokenize(list(prompts))
    return clip_cond_fn_from_tokens(clip_model, tokens, lens, grad_scale)


def clip_cond_fn_from_tokens(clip_model: nn.Module, tokens: Tensor, lens: Tensor, grad_scale: float) -> CondFn | None:
    """The official CLIP ``cond_fn``: ``grad_scale * d/dx [exp(logit_scale) * <z_text, z_image(x_t, t)>]``.

    ``clip_model``: a NoisedClip; ``tokens``/``lens`` from its tokenizer (B texts, or one for all).
    The returned ``cond_fn(x [B, 3, S, S] in [-1, 1], t [B]) -> grad`` needs S = the CLIP's image
    size (the official code does not resize), so use it with the 64 px base stage.
    Scale 0 returns None: no guidance, exactly as if no cond_fn were given.
    """
    from .models.clip import check_pairing

    grad_scale = check_number("CLIP guidance scale", grad_scale, low=0)
    if grad_scale == 0:
        return None
    with torch.no_grad():
        z_text = clip_model.embed_text(tokens, lens)

    def cond_fn(x: Tensor, t: Tensor) -> Tensor:
        check_pairing(z_text.shape[0], x.shape[0])
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            z_image = clip_model.embed_image(x_in, t)
            loss = clip_model.logit_scale.exp() * (z_text * z_image).sum()
            (grad,) = torch.autograd.grad(loss, x_in)
        return grad.detach() * grad_scale

    return cond_fn


def classifier_cond_fn(classifier: Callable[[Tensor, Tensor], Tensor], labels: Tensor, scale: float) -> CondFn | None:
    """Classifier guidance: ``scale * d/dx log p(y | x_t, t)`` for a noisy classifier.

    classifier(x_t, t) -> logits [N, classes]; labels: LongTensor [N] (or [1] for all).
    Scale 0 returns None: no guidance, exactly as if no cond_fn were given.
    """
    scale = check_number("classifier guidance scale", scale, low=0)
    if scale == 0:
        return None

    def cond_fn(x: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = torch.log_softmax(classifier(x_in, t).float(), dim=-1)
            selected = log_probs[torch.arange(len(x_in), device=x.device), labels.to(x.device).expand(len(x_in))]
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


# --------------------------------------------------------------------------------------------
# Guidance a pipeline binds to its prompts
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipGuidance:
    """CLIP guidance for a pipeline's ``cond_fns``: the pipeline binds it to each image's prompt.

    ``clip``: a NoisedClip (64 px: guides the base stage); ``scale`` >= 0 (0 = off).
    """

    clip: nn.Module
    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", check_number("CLIP guidance scale", self.scale, low=0))

    def bind(self, prompts: Sequence[str]) -> CondFn | None:
        return clip_cond_fn(self.clip, prompts, self.scale)


@dataclass(frozen=True)
class ClassifierGuidance:
    """Noisy-classifier guidance towards class ``label`` for a pipeline's ``cond_fns``.

    ``classifier(x_t, t) -> logits``; ``scale`` >= 0 (0 = off).
    """

    classifier: Callable[[Tensor, Tensor], Tensor]
    label: int
    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", check_number("classifier guidance scale", self.scale, low=0))
        classes = getattr(getattr(self.classifier, "config", None), "num_classes", None)
        if isinstance(self.label, bool) or not isinstance(self.label, int) or self.label < 0 or (
                classes is not None and self.label >= classes):
            valid = f"0..{classes - 1}" if classes is not None else "an int >= 0"
            raise ValueError(f"class label must be {valid}, got {self.label!r}")

    def bind(self, prompts: Sequence[str]) -> CondFn | None:
        return classifier_cond_fn(self.classifier, torch.tensor([self.label]), self.scale)


def bind_cond_fns(cond_fns: Sequence, prompts: Sequence[str]) -> CondFn | None:
    """One summed ``cond_fn`` for a sampling run over ``prompts`` (one per image).

    Entries are :class:`ClipGuidance` / :class:`ClassifierGuidance` (anything with ``bind(prompts)``),
    plain ``cond_fn(x, t) -> grad`` callables, or None (skipped).
    """
    if callable(cond_fns) or isinstance(cond_fns, str) or not isinstance(cond_fns, Sequence):
        raise ValueError("cond_fns must be a tuple or list of guidances (e.g. (ClipGuidance(clip, 2.0),))")
    bound = []
    for fn in cond_fns:
        if hasattr(fn, "bind"):
            bound.append(fn.bind(prompts))
        elif fn is None or callable(fn):
            bound.append(fn)
        else:
            raise ValueError(f"cond_fns entries must be guidances or cond_fn(x, t) callables, got {type(fn).__name__}")
    return combine_cond_fns(*bound)
