"""Sparse VideoGen2 in a diffusers pipeline: apply, per-job sessions, remove.

Example:
    >>> from svg2core import SVG2Config
    >>> from svg2core.integration import SparsityPlan, apply_svg2, remove_svg2, svg2_session
    >>> apply_svg2(pipe)                                   # once, after loading (and offload / caching setup)
    >>> plan = SparsityPlan(SVG2Config(top_p=0.9), dense_warmup_fraction=0.2, dense_layers=1)
    >>> with svg2_session(pipe, plan, num_inference_steps=50) as session:
    ...     video = pipe(prompt, num_inference_steps=50).frames[0]
    >>> session.metrics()                                  # plain dict for the job record
    >>> remove_svg2(pipe)                                  # stock processors, exactly as before

Design. :func:`apply_svg2` replaces the self-attention processors of every supported transformer of
the pipeline (Wan 2.1 / 2.2 incl. ``transformer_2``, HunyuanVideo) and attaches one router per
transformer; it stores no budget. A job's budget reaches the processors only through the
:class:`SVG2Session` that :func:`svg2_session` attaches to the routers for the duration of the
``with`` block and detaches on exit, also on exceptions. The session owns everything of that job:
the resolved plan, the step / CFG-branch counters, one fresh :class:`~svg2core.state.LayerState` per
layer (so centroids never carry over to another job) and the accounting. The scratch buffers of the
sparse calls (:class:`~svg2core.state.Workspace`) belong to the integration, one set per loaded pipeline,
shared by its jobs: they hold only the intermediates of the call in progress. Outside a session the
processors run the stock dense attention.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .config import SVG2Config
from .processors.accounting import AttentionAccounting, DenseAttentionCalibration, shape_key
from .processors.common import ROUTER_ATTR, SVG2Router, ValueMaker, dense_attention, made
from .processors.hunyuan import is_hunyuan_video_transformer, make_hunyuan_processors
from .processors.wan import is_wan_transformer, make_wan_processors
from .state import LayerState, Workspace

TRANSFORMER_ATTRS = ("transformer", "transformer_2")
BACKENDS = ("auto", "triton", "reference")


@dataclass(frozen=True)
class SparsityPlan:
    """A job's sparse-attention budget: the per-call config plus the dense schedule.

    Args:
        config: the budget of each sparse call (``mode="dense"`` runs every call dense).
        dense_warmup_steps: the first that many denoising steps run dense; overrides the fraction.
        dense_warmup_fraction: else, ``round(fraction * num_inference_steps)`` steps run dense.
        dense_layers: the first that many routed layers (transformer blocks, in forward order) run dense.
    """

    config: SVG2Config = dataclasses.field(default_factory=SVG2Config)
    dense_warmup_steps: int | None = None
    dense_warmup_fraction: float = 0.0
    dense_layers: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.config, SVG2Config):
            raise ValueError(f"config: must be an SVG2Config, got {type(self.config).__name__}")
        if self.dense_warmup_steps is not None and self.dense_warmup_steps < 0:
            raise ValueError(f"dense_warmup_steps: must be >= 0, got {self.dense_warmup_steps}")
        if not 0.0 <= self.dense_warmup_fraction <= 1.0:
            raise ValueError(f"dense_warmup_fraction: must be in [0, 1], got {self.dense_warmup_fraction}")
        if self.dense_layers < 0:
            raise ValueError(f"dense_layers: must be >= 0, got {self.dense_layers}")

    def warmup_steps(self, num_inference_steps: int) -> int:
        """How many of the first denoising steps run dense (the rule of ``worker.spec.SparsitySettings``)."""
        if self.config.mode == "dense":
            return num_inference_steps
        if self.dense_warmup_steps is not None:
            return min(self.dense_warmup_steps, num_inference_steps)
        return min(num_inference_steps, round(self.dense_warmup_fraction * num_inference_steps))

    @classmethod
    def from_settings(cls, settings: Any) -> SparsityPlan:
        """From a settings object or mapping with the ``SVG2Config`` fields plus ``dense_warmup_steps``,
        ``dense_warmup_fraction`` and ``dense_layers`` (e.g. ``worker.spec.SparsitySettings``)."""
        get = settings.get if isinstance(settings, Mapping) else (lambda name, default: getattr(settings, name, default))
        config_fields = {f.name for f in dataclasses.fields(SVG2Config)}
        config = SVG2Config(**{name: get(name, getattr(SVG2Config, name)) for name in config_fields})
        return cls(
            config=config,
            dense_warmup_steps=get("dense_warmup_steps", None),
            dense_warmup_fraction=get("dense_warmup_fraction", 0.0),
            dense_layers=get("dense_layers", 0),
        )


def as_plan(budget: SparsityPlan | SVG2Config | Any) -> SparsityPlan:
    """A :class:`SparsityPlan` from a plan, a bare ``SVG2Config`` (no dense schedule) or settings."""
    if isinstance(budget, SparsityPlan):
        return budget
    if isinstance(budget, SVG2Config):
        return SparsityPlan(config=budget)
    return SparsityPlan.from_settings(budget)


@dataclass
class _Forward:
    """The transformer call in progress: which step and CFG branch, and its accounting record."""

    router: SVG2Router
    step: int
    branch: int
    record: Any


class SVG2Session:
    """Everything of one job: budget, step / branch tracking, layer states, accounting.

    Created by :func:`svg2_session`; read :meth:`metrics` after the ``with`` block.

    Steps and branches: each transformer call is one CFG branch of one denoising step. The branch is
    the name of the pipeline's ``cache_context`` (``"cond"`` / ``"uncond"``), or, when the transformer
    is called without one, the call index modulo ``passes_per_step``. The step is the context's
    ``step_index`` when the pipeline provides it, else the number of earlier calls of the same branch
    in this job (shared by ``transformer`` and ``transformer_2``, which split the steps between them).

    ``text_mask_all_valid``: the caller knows, on the host, that every text key of this job's calls is
    valid (HunyuanVideo with a packed prompt, see :func:`svg2_session`): the joint-attention masks are
    then dropped before the attention call, so dense calls take SDPA's unmasked path and sparse calls
    get no ``key_padding_mask``. Decided per job, never per call: reading the mask per call would be a
    host-device sync in the hot path (and break CUDA-graph capture).
    """

    def __init__(self, integration: SVG2Integration, plan: SparsityPlan, num_inference_steps: int,
                 passes_per_step: int = 1, timing: bool = True, text_mask_all_valid: bool = False) -> None:
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: must be an integer >= 1, got {num_inference_steps!r}")
        if not isinstance(passes_per_step, int) or passes_per_step < 1:
            raise ValueError(f"passes_per_step: must be an integer >= 1, got {passes_per_step!r}")
        self.integration = integration
        self.plan = plan
        self.num_inference_steps = num_inference_steps
        self.warmup_steps = plan.warmup_steps(num_inference_steps)
        self.passes_per_step = passes_per_step
        self.timing = timing
        if not isinstance(text_mask_all_valid, bool):
            raise ValueError(f"text_mask_all_valid: must be a bool, got {text_mask_all_valid!r}")
        self.text_mask_all_valid = text_mask_all_valid
        self.accounting = AttentionAccounting(timing=timing)
        self.layer_states: dict[tuple[str, int], LayerState] = {}
        self.branches: dict[str, int] = {}
        self._branch_calls: dict[str, int] = {}
        self._calls = 0
        self._current: _Forward | None = None
        self._metrics: dict | None = None
        self.active = False

    # ---- called by the routers (hot path: host-side bookkeeping only) ----

    def begin_forward(self, router: SVG2Router, context, device: torch.device | None) -> None:
        if context is not None:
            name = context.name
        else:
            name = f"pass{self._calls % self.passes_per_step}"
        branch = self.branches.setdefault(name, len(self.branches))
        counted = self._branch_calls.get(name, 0)
        self._branch_calls[name] = counted + 1
        self._calls += 1
        step = context.step_index if context is not None and context.step_index is not None else counted
        record = self.accounting.begin_forward(step, branch, router.num_layers, device, self.timing)
        self._current = _Forward(router, step, branch, record)

    def end_forward(self, router: SVG2Router) -> None:
        current = self._current
        if current is not None and current.router is router:
            self.accounting.end_forward(current.record)
            self._current = None

    def dense_reason(self, layer: int, step: int) -> str | None:
        """Why a call of ``layer`` at ``step`` runs dense, or None when it runs sparse."""
        if self.plan.config.mode == "dense":
            return "dense_mode"
        if step < self.warmup_steps:
            return "warmup"
        if layer < self.plan.dense_layers:
            return "dense_layer"
        return None

    def attend(self, router: SVG2Router, layer: int, query: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor, attn_mask, backend, parallel_config, num_dense_tokens: int,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        current = self._current
        if current is None or current.router is not router:
            # Called outside a tracked transformer forward (e.g. a block run on its own): stock dense.
            return dense_attention(query, key, made(value), attn_mask, backend, parallel_config)
        current.record.calls += 1
        if self.text_mask_all_valid:
            # Every key is valid (the caller's per-job guarantee): no mask, SDPA's unmasked fast path.
            attn_mask = key_padding_mask = None
        skey = shape_key(query)
        reason = self.dense_reason(layer, current.step)
        if reason is not None:
            value = made(value)  # before the timer: the dense time is the attention's alone
        timer = self.accounting.start_timer(query.device, self.timing)
        if reason is not None:
            out = dense_attention(query, key, value, attn_mask, backend, parallel_config)
            self.accounting.record_dense(skey, reason, timer)
            return out
        if parallel_config is not None:
            raise NotImplementedError("svg2: context-parallel attention is not supported; disable parallelism")
        out, density = self._sparse(router, layer, current.branch, query, key, value,
                                    num_dense_tokens, key_padding_mask, timer)
        self.accounting.record_sparse(skey, density, num_dense_tokens, key_padding_mask, timer)
        return out

    def _sparse(self, router, layer, branch, query, key, value, num_dense_tokens, key_padding_mask, timer):
        from .attention import svg2_attention  # svg2core.attention imports the kernels lazily

        state = self.layer_states.get((router.tag, layer))
        if state is None:
            state = self.layer_states[(router.tag, layer)] = LayerState()
        backend = self.integration.backend
        if backend == "auto":
            backend = "triton" if query.is_cuda else "reference"
        if isinstance(value, ValueMaker):
            maker = value

            def v():  # made inside the call, beside its k-means; its span is not the attention's time
                with timer.exclude() if timer is not None else contextlib.nullcontext():
                    return maker().transpose(1, 2)
        else:
            v = value.transpose(1, 2)
        # (B, N, H, D) -> (B, H, N, D) views; svg2 returns (B, H, N, D)
        out, density = svg2_attention(
            query.transpose(1, 2), key.transpose(1, 2), v, self.plan.config, state,
            branch=branch, workspace=self.integration.workspace, num_dense_tokens=num_dense_tokens,
            key_padding_mask=key_padding_mask, backend=backend,
        )
        return out.transpose(1, 2), density

    # ---- end of job ----

    def metrics(self) -> dict:
        """The job's accounting as a plain dict (synchronises with the device once; cached).

        Keys: call counts (``attention_calls``, ``dense_calls`` and their reasons, ``sparse_calls``,
        ``skipped_calls``), ``mean_density_sparse`` / ``mean_density_overall`` (dense calls as 1.0),
        ``attention_flops`` vs ``attention_flops_dense_equivalent``, ``sparse_attention_seconds`` /
        ``dense_attention_seconds`` (CUDA events; wall-clock on CPU), ``step_transformer_seconds`` (transformer
        time per denoising step), ``estimated_attention_seconds_saved`` (calibrated dense SDPA time
        minus measured sparse time; None when it cannot be estimated: CPU, ``timing=False``), plus
        the schedule that was applied.
        """
        if self.active:
            raise RuntimeError("svg2: session metrics are available once the session has ended")
        if self._metrics is None:
            calibration = self.integration.calibration if self.integration.estimate_savings else None
            metrics = self.accounting.metrics(calibration)
            metrics.update(
                num_inference_steps=self.num_inference_steps,
                warmup_steps=self.warmup_steps,
                dense_layers=self.plan.dense_layers,
                mode=self.plan.config.mode,
                branches=sorted(self.branches, key=self.branches.get),
            )
            self._metrics = metrics
        return self._metrics


class SVG2Integration:
    """The svg2 processors installed on a pipeline's transformers; returned by :func:`apply_svg2`."""

    def __init__(self, backend: str, estimate_savings: bool, default_plan: SparsityPlan | None = None,
                 value_beside_selection: bool = False) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if not isinstance(value_beside_selection, bool):
            raise ValueError(f"value_beside_selection: must be a bool, got {value_beside_selection!r}")
        self.backend = backend
        self.value_beside_selection = value_beside_selection
        self.default_plan = default_plan
        self.estimate_savings = estimate_savings
        # The probe times the processors' own dense call (diffusers' dispatch, (B, N, H, D)), no mask.
        self.calibration = DenseAttentionCalibration(
            lambda q, k, v: dense_attention(q, k, v, None, None, None))
        # Scratch buffers of the sparse calls, one set per loaded pipeline: sized by the first calls of
        # the first job, reused by every later call and job (no per-job allocation, stable addresses for
        # CUDA graphs). They only ever hold intermediates of the call in progress, so sharing them across
        # jobs carries nothing over; jobs run one at a time (one session at a time, below). The buffers are
        # normal tensors even when allocated under torch.inference_mode (see Workspace), so jobs run under
        # inference_mode and under no_grad can follow each other.
        self.workspace = Workspace()
        self.routers: dict[str, SVG2Router] = {}
        self._originals: dict[str, list[tuple[torch.nn.Module, Any]]] = {}
        self.session: SVG2Session | None = None

    def _install(self, tag: str, transformer: torch.nn.Module) -> None:
        if getattr(transformer, ROUTER_ATTR, None) is not None:
            raise ValueError(f"{tag}: svg2 is already applied; call remove_svg2 first")
        if is_wan_transformer(transformer):
            make = make_wan_processors
        elif is_hunyuan_video_transformer(transformer):
            make = make_hunyuan_processors
        else:
            raise TypeError(f"{tag}: unsupported transformer {type(transformer).__name__} "
                            "(supported: WanTransformer3DModel, HunyuanVideoTransformer3DModel)")
        router = SVG2Router(transformer, tag, num_layers=0)
        router.integration = self
        router.value_beside_selection = self.value_beside_selection
        pairs = make(transformer, router)
        if not pairs:
            raise ValueError(f"{tag}: no self-attention layer to route")
        router.num_layers = len(pairs)
        self._originals[tag] = [(module, module.processor) for module, _ in pairs]
        for module, processor in pairs:
            module.set_processor(processor)
        router.install_hooks(pairs[0][0])
        setattr(transformer, ROUTER_ATTR, router)
        self.routers[tag] = router

    def remove(self) -> None:
        """Restore every original processor object and remove the hooks."""
        if self.session is not None:
            raise RuntimeError("svg2: cannot remove the integration while a session is active")
        for tag, router in list(self.routers.items()):
            for module, original in self._originals.pop(tag):
                module.set_processor(original)
            router.remove_hooks()
            if getattr(router.transformer, ROUTER_ATTR, None) is router:
                delattr(router.transformer, ROUTER_ATTR)
            del self.routers[tag]
        self.workspace.clear()  # stock processors from now on: release the scratch memory

    @contextlib.contextmanager
    def session_for(self, budget, num_inference_steps: int, passes_per_step: int = 1,
                    timing: bool = True, text_mask_all_valid: bool = False) -> Iterator[SVG2Session]:
        if self.session is not None:
            raise RuntimeError("svg2: a session is already active on this pipeline (one job at a time)")
        if not self.routers:
            raise RuntimeError("svg2: the integration was removed")
        session = SVG2Session(self, as_plan(budget), num_inference_steps, passes_per_step, timing,
                              text_mask_all_valid)
        self.session = session
        session.active = True
        for router in self.routers.values():
            router.session = session
        try:
            yield session
        finally:
            for router in self.routers.values():
                router.session = None
            self.session = None
            session.active = False
            session._current = None
            # Drop the job's centroids now; only the accounting outlives the job. The scratch buffers
            # (the integration's workspace) stay for the next job: they hold nothing of this one.
            session.layer_states.clear()


def _transformers(target: torch.nn.Module | Any) -> list[tuple[str, torch.nn.Module]]:
    """(tag, transformer) of a pipeline's transformers (``transformer``, ``transformer_2``), or of a
    transformer passed directly (tag ``"transformer"``)."""
    if isinstance(target, torch.nn.Module):
        return [("transformer", target)]
    found = [(attr, getattr(target, attr)) for attr in TRANSFORMER_ATTRS if getattr(target, attr, None) is not None]
    if not found:
        raise TypeError(f"target: {type(target).__name__} has no transformer (expected a pipeline or a transformer)")
    return found


def _integration_of(target) -> SVG2Integration:
    if isinstance(target, SVG2Integration):
        return target
    integrations = {id(r.integration): r.integration
                    for _, t in _transformers(target)
                    if (r := getattr(t, ROUTER_ATTR, None)) is not None}
    if len(integrations) != 1:
        raise ValueError("target: svg2 is not applied (call apply_svg2 first)")
    return next(iter(integrations.values()))


def find_svg2(target) -> SVG2Integration | None:
    """The :class:`SVG2Integration` applied to ``target`` (a pipeline or transformer), or None."""
    try:
        return _integration_of(target)
    except (TypeError, ValueError):
        return None


def apply_svg2(target, default_budget=None, *, backend: str = "auto",
               estimate_savings: bool = True, value_beside_selection: bool = False) -> SVG2Integration:
    """Route the self-attention of every supported transformer of ``target`` through svg2.

    Args:
        target: a diffusers pipeline (its ``transformer`` and, for Wan 2.2 two-expert pipelines,
            ``transformer_2``) or a transformer.
        default_budget: the budget of sessions opened without one (same forms as in
            :func:`svg2_session`); None: such sessions run dense.
        backend: ``"triton"``, ``"reference"`` (plain torch, CPU) or ``"auto"`` (triton on CUDA tensors).
        estimate_savings: calibrate dense SDPA time per call shape (GPU only, once per shape) to
            report the estimated attention time saved.
        value_beside_selection: the processors hand each call their value projection instead of its result,
            and a sparse call runs it on the caller's stream while its two k-means chains run on side streams
            (``svg2_attention`` with a callable ``v``); dense calls are unchanged. The output is the same; whether it
            is faster is the GPU's to say (docs/benchmarks/NOTES_sparse_attn.md v32). Off by default. The sparse
            calls' measured attention time leaves the projection's span out.

    Returns:
        The installed :class:`SVG2Integration`. Budgets take effect per job through
        :func:`svg2_session`; outside a session the processors compute the stock dense attention.

    Apply after ``enable_model_cpu_offload`` / ``enable_cache`` or before: the routing uses plain
    torch module hooks and processor objects, which neither re-wraps nor removes.
    """
    integration = SVG2Integration(backend, estimate_savings,
                                  as_plan(default_budget) if default_budget is not None else None,
                                  value_beside_selection=value_beside_selection)
    try:
        for tag, transformer in _transformers(target):
            integration._install(tag, transformer)
    except BaseException:
        integration.remove()
        raise
    return integration


def remove_svg2(target) -> None:
    """Undo :func:`apply_svg2`: the original processor objects and no svg2 hooks remain."""
    _integration_of(target).remove()


def svg2_session(target, budget=None, *, num_inference_steps: int, passes_per_step: int = 1,
                 timing: bool = True, text_mask_all_valid: bool = False):
    """Context manager that runs one job's transformer calls under ``budget``.

    Args:
        target: the pipeline / transformer svg2 was applied to, or the :class:`SVG2Integration`.
        budget: a :class:`SparsityPlan`, an ``SVG2Config`` (no dense schedule) or a settings object /
            mapping such as ``worker.spec.SparsitySettings`` (see :meth:`SparsityPlan.from_settings`).
            ``None``: the default budget given to :func:`apply_svg2`, else every call dense (counted).
        num_inference_steps: the job's denoising steps (resolves a fractional dense warm-up).
        passes_per_step: transformer calls per step when the caller sets no ``cache_context``
            (e.g. 2 for a CFG loop that calls the transformer directly, cond then uncond).
        timing: record CUDA events (wall-clock on CPU) per attention call and per forward.
        text_mask_all_valid: every text token of every transformer call of this job is valid
            (HunyuanVideo: the caller packed the prompt to its valid tokens and checked its mask once,
            on the host, before denoising). The routed layers then drop the joint-attention mask:
            dense calls run unmasked SDPA (cuDNN's fast path) and sparse calls get no key padding mask.
            Only the caller can know this without a per-call device sync; a wrong True lets padded text
            tokens be attended to. Default False: the masks are used as given.

    Yields:
        The :class:`SVG2Session`; its :meth:`~SVG2Session.metrics` is the job's accounting.
    """
    integration = _integration_of(target)
    if budget is None:
        budget = integration.default_plan or SparsityPlan(SVG2Config(mode="dense"))
    return integration.session_for(budget, num_inference_steps, passes_per_step, timing, text_mask_all_valid)
