"""What the Wan and HunyuanVideo processors share: the per-transformer router and the step probe.

One :class:`SVG2Router` is attached to each transformer the integration is applied to. Its
processors (one per self-attention layer) hand every attention call to :meth:`SVG2Router.attend`,
which asks the job session that is active right now (if any) whether this call runs dense or
sparse. Between jobs the router holds no session and every call is the stock dense attention, so
nothing of one job can reach the next.

Steps and CFG branches are learnt without touching the model's forward:

* a plain ``torch.nn.Module`` forward pre-hook / post-hook on the transformer marks the start and the
  end of each transformer call (each call is one CFG branch of one denoising step); torch keeps
  these hooks in ``_forward_pre_hooks`` so they survive accelerate's CPU-offload hooks re-wrapping
  ``forward`` after every pipeline call;
* a stateful diffusers hook on the first routed attention module receives the ``CacheContext``
  that diffusers pipelines set around each call (``with transformer.cache_context("cond"):``), which
  names the CFG branch (and, for some pipelines, the step index).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager
from diffusers.models.attention_dispatch import dispatch_attention_fn

if TYPE_CHECKING:
    from diffusers.hooks.hooks import CacheContext

PROBE_HOOK_NAME = "svg2_cache_context_probe"
ROUTER_ATTR = "_svg2_router"


class ActiveSession(Protocol):
    """What the router needs of a job session (implemented by :class:`svg2core.integration.SVG2Session`)."""

    def begin_forward(self, router: SVG2Router, context: CacheContext | None,
                      device: torch.device | None) -> None: ...

    def end_forward(self, router: SVG2Router) -> None: ...

    def attend(self, router: SVG2Router, layer: int, query: torch.Tensor, key: torch.Tensor,
               value: ValueSource, attn_mask: torch.Tensor | None, backend, parallel_config,
               num_dense_tokens: int, key_padding_mask: torch.Tensor | None) -> torch.Tensor: ...


class ValueMaker:
    """The values of a call not made yet: ``fn(*args)`` returns them, ``(B, N, H, D)``. A processor passes one
    instead of the tensor when its router has ``value_beside_selection``: a sparse call then makes the values (the
    layer's value projection) on the caller's stream after queueing its k-means on side streams, so that the two run
    side by side; a dense call makes them first."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., torch.Tensor], *args) -> None:
        self.fn = fn
        self.args = args

    def __call__(self) -> torch.Tensor:
        return self.fn(*self.args)


ValueSource = torch.Tensor | ValueMaker


def made(value: ValueSource) -> torch.Tensor:
    """The values: ``value`` itself, or what its maker returns."""
    return value() if isinstance(value, ValueMaker) else value


def dense_attention(query, key, value, attn_mask, backend, parallel_config) -> torch.Tensor:
    """The stock processors' attention call: diffusers' dispatcher, ``(B, N, H, D)`` layout."""
    return dispatch_attention_fn(
        query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=False,
        backend=backend, parallel_config=parallel_config,
    )


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class CacheContextProbe(ModelHook):
    """A diffusers hook that does nothing to the forward; it exists to receive the pipeline's
    ``CacheContext`` (diffusers hands it to every stateful hook's ``StateManager`` under the
    transformer when the pipeline enters ``transformer.cache_context(name, ...)``)."""

    _is_stateful = True

    def __init__(self) -> None:
        super().__init__()
        self.state_manager = StateManager(_NoState)

    @property
    def context(self) -> CacheContext | None:
        return self.state_manager._context

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


class SVG2Router:
    """Routes the self-attention calls of one transformer to the active job session.

    Args:
        transformer: the diffusers transformer the processors belong to.
        tag: its name in the pipeline (``"transformer"``, ``"transformer_2"``); keys its layer states.
        num_layers: how many self-attention layers are routed (calls expected per forward).
    """

    def __init__(self, transformer: torch.nn.Module, tag: str, num_layers: int) -> None:
        self.transformer = transformer
        self.tag = tag
        self.num_layers = num_layers
        self.session: ActiveSession | None = None
        self.integration = None  # the SVG2Integration that installed this router (set by it)
        #: processors pass a :class:`ValueMaker` instead of the values (set by the integration, fixed while installed)
        self.value_beside_selection = False
        self.probe: CacheContextProbe | None = None
        self._probe_module: torch.nn.Module | None = None
        self._handles: list = []

    # ---- installation ----

    def install_hooks(self, probe_module: torch.nn.Module) -> None:
        """Add the forward hooks on the transformer and the context probe on ``probe_module``."""
        self._handles = [
            self.transformer.register_forward_pre_hook(self._on_forward_start, with_kwargs=True),
            self.transformer.register_forward_hook(self._on_forward_end, always_call=True),
        ]
        self.probe = CacheContextProbe()
        self._probe_module = probe_module
        HookRegistry.check_if_exists_or_initialize(probe_module).register_hook(self.probe, PROBE_HOOK_NAME)
        _invalidate_registry_cache(self.transformer)

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._probe_module is not None:
            registry = getattr(self._probe_module, "_diffusers_hook", None)
            if registry is not None:
                registry.remove_hook(PROBE_HOOK_NAME, recurse=False)
            _invalidate_registry_cache(self.transformer)
        self.probe = None
        self._probe_module = None

    # ---- called by torch / the processors ----

    @torch.compiler.disable
    def _on_forward_start(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        session = self.session
        if session is not None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if not isinstance(hidden, torch.Tensor):
                hidden = None
            context = self.probe.context if self.probe is not None else None
            session.begin_forward(self, context, hidden.device if hidden is not None else None)

    @torch.compiler.disable
    def _on_forward_end(self, module: torch.nn.Module, args: tuple, output) -> None:
        session = self.session
        if session is not None:
            session.end_forward(self)

    @torch.compiler.disable
    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: ValueSource, *,
               attn_mask: torch.Tensor | None, backend, parallel_config, num_dense_tokens: int = 0,
               key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of one routed layer. ``query`` / ``key`` / ``value``: ``(B, N, H, D)``
        (diffusers layout), ``value`` possibly a :class:`ValueMaker`; returns ``(B, N, H, D)``.

        Runs outside any ``torch.compile`` graph (a graph break per routed layer): the dense/sparse
        decision reads the session's Python state, which a compiled graph would otherwise guard on
        and recompile for at every step.
        """
        session = self.session
        if session is None:
            return dense_attention(query, key, made(value), attn_mask, backend, parallel_config)
        return session.attend(self, layer, query, key, value, attn_mask, backend, parallel_config,
                              num_dense_tokens, key_padding_mask)


def _invalidate_registry_cache(transformer: torch.nn.Module) -> None:
    # The transformer's registry caches the list of child registries that `cache_context` walks;
    # adding or removing the probe changes that list.
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None:
        registry.invalidate_child_registries_cache()


class SVG2ProcessorBase:
    """Shared fields of the svg2 processors: the router, the layer index, and the diffusers backend
    settings (``set_attention_backend`` / context parallelism write ``_attention_backend`` /
    ``_parallel_config`` on every processor; we copy them from the stock processor we replace)."""

    _attention_backend = None
    _parallel_config = None

    def __init__(self, router: SVG2Router, layer: int, original) -> None:
        self.router = router
        self.layer = layer
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def _values(self, fn: Callable[..., torch.Tensor], *args) -> ValueSource:
        """The call's values ``fn(*args)``, or with the router's ``value_beside_selection`` a :class:`ValueMaker`
        that the call runs itself, beside its k-means."""
        return ValueMaker(fn, *args) if self.router.value_beside_selection else fn(*args)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tag={self.router.tag!r}, layer={self.layer})"
