"""Models over a window [batch, window, features] -> one prediction per window [batch].

LayerNorm rather than BatchNorm everywhere: BatchNorm statistics are per micro-batch, which breaks the
equivalence of gradient accumulation with one big batch (pytorch #46516).

Your own model: `model: package.module:Class` (importable from the working directory or PYTHONPATH) trains
through the same device windows, step graph, accumulation, checkpoints, report and doctor as a built-in, given
this protocol:

- `Class(n_features, window)`, or `Class(n_features, window, cfg=cfg)` when its constructor has a parameter named
  `cfg` (the run's `Config`: hidden, layers, dropout, ... are yours to read). Your class initialises its own
  weights (tradelib's `init_gain` is not applied to it) and has at least one trainable parameter;
- `forward(x)`: x `[batch, window, n_features]` (float32; bf16 inside autocast) -> `[batch]`, one prediction per
  window. No host syncs (`.item()`, data-dependent shapes) if it is to run under the step graph;
- optional `flops_per_sample(dense: bool) -> float`: forward FLOPs per prediction (2 per multiply-add), for MFU
  (without it MFU is n/a, and says why); training counts 3x that, less `input_flops(dense: bool) -> float` where
  the model gives it: the forward FLOPs of its layer that reads the data, whose backward makes no gradient for
  the data (`training_flops_per_item`);
- optional dense training (`dense: true`): `receptive_field: int` (an output sees that many rows, itself
  included; at most the window) and `forward_dense(x) -> [batch, length]`, a prediction at every position of a
  chunk.

The import path is the `model` string of the run's Config, which the checkpoint and summary.json record (a
string, never a pickled class: checkpoints load with weights_only=True); resuming with another `model` is
refused like any other changed setting.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import traceback

import torch
from torch import nn
from torch.nn import functional as F

MODELS = ("mlp", "lstm", "gru", "tcn", "transformer")  # Config.model's pattern names the same five
USER_MODEL = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # package.module:Class


class Head(nn.Module):
    """Linear read-out with the optional soft output clip (tanh keeps a gradient, a hard clamp does not)."""

    def __init__(self, d_in: int, output_clip: float) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, 1)
        self.output_clip = output_clip

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.proj(h).squeeze(-1)
        if self.output_clip > 0:
            out = self.output_clip * torch.tanh(out / self.output_clip)
        return out


class MLP(nn.Module):
    def __init__(self, n_features: int, window: int, hidden: int, layers: int, dropout: float, output_clip: float):
        super().__init__()
        dims = [n_features * window] + [hidden] * max(layers, 1)
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.LayerNorm(b), nn.GELU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*blocks)
        self.head = Head(hidden, output_clip)
        self.window, self.n_features, self.hidden, self.layers = window, n_features, hidden, max(layers, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))

    def flops_per_sample(self, dense: bool) -> float:
        """Forward matmul FLOPs per window (2 per multiply-add)."""
        d = self.n_features * self.window
        return 2.0 * (d * self.hidden + (self.layers - 1) * self.hidden**2 + self.hidden)

    def input_flops(self, dense: bool) -> float:
        """The first layer's forward FLOPs (see `training_flops_per_item`)."""
        return 2.0 * self.n_features * self.window * self.hidden


class RNN(nn.Module):
    def __init__(self, kind: str, n_features: int, window: int, hidden: int, layers: int, dropout: float,
                 output_clip: float):
        super().__init__()
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(n_features, hidden, num_layers=max(layers, 1), batch_first=True,
                       dropout=dropout if layers > 1 else 0.0)
        self.norm = nn.LayerNorm(hidden)
        self.head = Head(hidden, output_clip)
        self.gates = 4 if kind == "lstm" else 3
        self.n_features, self.window, self.hidden, self.layers = n_features, window, hidden, max(layers, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(self.norm(out[:, -1]))

    def flops_per_sample(self, dense: bool) -> float:
        per_step = sum(
            2.0 * self.gates * ((self.n_features if i == 0 else self.hidden) + self.hidden) * self.hidden
            for i in range(self.layers)
        )
        return per_step * self.window + 2.0 * self.hidden

    def input_flops(self, dense: bool) -> float:
        """The first layer's input projection, every time step (see `training_flops_per_item`)."""
        return 2.0 * self.gates * self.n_features * self.hidden * self.window


class CausalBlock(nn.Module):
    """Two dilated causal convolutions with a residual: the output at t sees inputs t-R+1..t only."""

    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.conv1(F.pad(x, (self.pad, 0))))
        h = self.drop(self.conv2(F.pad(h, (self.pad, 0))))
        return F.gelu(x + h)


class TCN(nn.Module):
    """A causal TCN. `forward_dense` predicts at every position of a chunk; `forward` at the last one."""

    def __init__(self, n_features: int, hidden: int, layers: int, dropout: float, output_clip: float,
                 kernel: int = 3) -> None:
        super().__init__()
        self.inp = nn.Conv1d(n_features, hidden, 1)
        self.blocks = nn.ModuleList(CausalBlock(hidden, kernel, 2**i, dropout) for i in range(max(layers, 1)))
        self.head = Head(hidden, output_clip)
        self.receptive_field = 1 + sum(2 * (kernel - 1) * 2**i for i in range(max(layers, 1)))
        self.n_features, self.hidden, self.kernel = n_features, hidden, kernel

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.transpose(1, 2))
        for block in self.blocks:
            h = block(h)
        return self.head(h.transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # only the last receptive field matters for the last output: slice it off and save the FLOPs
        return self.forward_dense(x[:, -self.receptive_field :])[:, -1]

    def flops_per_sample(self, dense: bool) -> float:
        """Per prediction: dense mode one output position (a chunk's first receptive_field - 1 positions are
        computed untrained: `training_flops_per_sample` spreads them over its targets); `forward` computes the
        whole receptive field to give its last position."""
        per_pos = 2.0 * self.n_features * self.hidden
        per_pos += sum(2 * 2.0 * self.kernel * self.hidden**2 for _ in self.blocks) + 2.0 * self.hidden
        return per_pos if dense else per_pos * self.receptive_field

    def input_flops(self, dense: bool) -> float:
        """The 1x1 input convolution, per position as `flops_per_sample` counts them."""
        return 2.0 * self.n_features * self.hidden * (1 if dense else self.receptive_field)


class EncoderBlock(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + MLP(norm(x)); attention causal, so position t sees 0..t."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        # no bias: norm1's own bias gives the query one, and a key bias would add the same to all of a query's
        # scores, which softmax ignores (a weight with no gradient, which AdamW walks on rounding noise)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash / efficient kernels on a GPU
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.norm2(x)))


def sinusoidal(length: int, d: int) -> torch.Tensor:
    """The fixed sin/cos position table of "Attention is all you need" [length, d]."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10_000.0) / d))
    table = torch.zeros(length, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return table


class Transformer(nn.Module):
    """A causal pre-norm transformer encoder over the window: the model a GPU is built for (its matmuls are
    [batch x window, hidden] by [hidden, hidden]-sized, where the recurrent models' are a row per time step).

    Causal attention makes dense training GPT's: `forward_dense` predicts at every position of a chunk of
    `window` rows, each from its prefix, and `forward` is the last position of a window (the same function).
    Hence `receptive_field` 1: every position of a chunk trains; chunks must be the window's length (`dense_chunk`
    = `window`, `max_chunk`): a longer one has positions never learned, a shorter one never trains the last
    positions, where evaluation reads its prediction.
    """

    def __init__(self, n_features: int, window: int, d_model: int, layers: int, heads: int, dropout: float,
                 output_clip: float, positions: str) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"transformer: hidden {d_model} is not a multiple of heads {heads}")
        self.inp = nn.Linear(n_features, d_model)
        if positions == "learned":
            self.pos = nn.Parameter(torch.randn(window, d_model) * 0.02)
        elif positions == "sinusoidal":
            self.register_buffer("pos", sinusoidal(window, d_model), persistent=False)
        else:
            raise ValueError(f"transformer: positions {positions!r}; choose learned or sinusoidal")
        self.blocks = nn.ModuleList(EncoderBlock(d_model, heads, dropout) for _ in range(max(layers, 1)))
        self.norm = nn.LayerNorm(d_model)
        self.head = Head(d_model, output_clip)
        self.receptive_field = 1
        self.max_chunk = window  # dense chunks of exactly this length (check_model)
        self.n_features, self.window, self.d, self.layers = n_features, window, d_model, max(layers, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        if t > self.window:
            raise ValueError(f"transformer: a chunk of {t} rows is longer than the window {self.window} its positions "
                             f"cover: set dense_chunk to the window ({self.window})")
        h = self.inp(x) + self.pos[:t]
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x)[:, -1])

    def flops_per_sample(self, dense: bool) -> float:
        """Forward matmul FLOPs per prediction (2 per multiply-add): the input projection, per layer the QKV and
        output projections, attention's two matmuls (q k^T and att v, counted whole over the window's square, as
        nanoGPT and torch's FlopCounterMode do, though a causal kernel skips about half) and the 4x MLP, and
        the head. A window pays all of it for one prediction; dense mode shares a window-long chunk's body
        among its `window` trained positions."""
        w, d, f = self.window, self.d, self.n_features
        per_layer = 2.0 * w * d * 3 * d + 2.0 * w * w * d * 2 + 2.0 * w * d * d + 2.0 * w * d * 4 * d * 2
        body = 2.0 * w * f * d + self.layers * per_layer
        return (body / w if dense else body) + 2.0 * d

    def input_flops(self, dense: bool) -> float:
        """The input projection, per position as `flops_per_sample` counts them."""
        return 2.0 * self.n_features * self.d * (1 if dense else self.window)


def init_weights(model: nn.Module, gain: float) -> None:
    """By module type, as nanoGPT's `_init_weights`: Xavier-uniform weights with the given gain (the seed's 0.5)
    and zero biases for linear, convolution and recurrent layers; norms keep weight 1 and bias 0."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.xavier_uniform_(module.weight, gain=gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LSTM, nn.GRU)):
            for name, p in module.named_parameters():
                (nn.init.xavier_uniform_(p, gain=gain) if name.startswith("weight") else nn.init.zeros_(p))
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def model_for(cfg, n_features: int) -> nn.Module:
    """The model a Config asks for: a built-in by name, initialised; or the user's `package.module:Class` (see the
    module's docstring), built with `cfg` where its constructor takes one."""
    window, hidden, layers, dropout, output_clip = cfg.window, cfg.hidden, cfg.layers, cfg.dropout, cfg.output_clip
    if USER_MODEL.fullmatch(cfg.model):
        return user_model(cfg, n_features)
    name = cfg.model.lower()
    if name == "mlp":
        model = MLP(n_features, window, hidden, layers, dropout, output_clip)
    elif name in ("lstm", "gru"):
        model = RNN(name, n_features, window, hidden, layers, dropout, output_clip)
    elif name == "tcn":
        model = TCN(n_features, hidden, layers, dropout, output_clip)
        if model.receptive_field > window:
            raise ValueError(f"tcn: receptive field {model.receptive_field} exceeds window {window}: "
                             f"use fewer layers or a longer window")
    elif name == "transformer":
        model = Transformer(n_features, window, hidden, layers, cfg.heads, dropout, output_clip, cfg.positions)
    else:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}, or package.module:Class")
    init_weights(model, cfg.init_gain)
    return model


def _where(exc: BaseException, file: str | None = None) -> str:
    """' (file, line N)' where the user's own code failed: the innermost frame in `file` (the user's module) that the
    exception passed through, else its innermost ('' when it has none: a SyntaxError names its line in its text)."""
    frames = traceback.extract_tb(exc.__traceback__)
    frames = [f for f in frames if f.filename == file] or frames
    return f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames and not isinstance(exc, SyntaxError) else ""


def user_class(path: str) -> type:
    """The class named by `package.module:Class`, imported from the working directory or PYTHONPATH."""
    import sys
    from pathlib import Path

    module_name, _, class_name = path.partition(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:  # `python -m` and scripts put their own folder first, not cwd
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name or ""
        if missing and not (module_name == missing or module_name.startswith(missing + ".")):
            raise ValueError(f"model {path!r}: {module_name!r} was found, but its own import failed{_where(exc)}: "
                             f"{exc}") from exc
        raise ValueError(f"model {path!r}: cannot import {module_name!r} ({exc}); it must be importable from the "
                         f"working directory or PYTHONPATH") from None
    except Exception as exc:  # noqa: BLE001 - the user's module raised on import: its error, not tradelib's
        raise ValueError(f"model {path!r}: importing {module_name!r} raised {type(exc).__name__}{_where(exc)}: "
                         f"{exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"model {path!r}: {module_name} ({getattr(module, '__file__', '?')}) has no nn.Module "
                         f"subclass named {class_name!r}")
    return cls


def check_model(cfg) -> None:
    """What the model settings alone refuse, said before a run folder, a feature build or a launch, not once the
    data is loaded: the user's class must import and its constructor take the protocol's arguments, a built-in's
    constructor must accept the settings (built on the meta device: no memory, no random draws), dense needs a
    causal model whose positions cover `dense_chunk`."""
    if USER_MODEL.fullmatch(cfg.model):
        model = user_class(cfg.model)
        takes_cfg(model, cfg.model)
    else:
        with torch.device("meta"):
            model = model_for(cfg, 1)
    if cfg.dense and not hasattr(model, "forward_dense"):
        raise ValueError(f"dense=True needs a causal model with forward_dense (tcn, transformer), not {cfg.model!r}")
    max_chunk = getattr(model, "max_chunk", None)
    if cfg.dense and isinstance(max_chunk, int) and cfg.dense_chunk > max_chunk:
        raise ValueError(f"{cfg.model}: dense_chunk {cfg.dense_chunk} is longer than the window {max_chunk} its "
                         f"positions cover: set dense_chunk to the window")
    if cfg.dense and isinstance(max_chunk, int) and cfg.dense_chunk < max_chunk:
        raise ValueError(f"{cfg.model}: dense_chunk {cfg.dense_chunk} is shorter than the window {max_chunk}: its "
                         f"positions {cfg.dense_chunk}..{max_chunk - 1}, where evaluation's windows end, would never "
                         f"train (they would keep their initial values): set dense_chunk to the window")


def takes_cfg(cls: type, path: str) -> bool:
    """Whether the user's class takes the run's Config (a parameter named `cfg`, given by keyword, so that it may
    be keyword-only); a constructor that cannot be called as the protocol calls it is refused here, before any
    feature build."""
    signature = inspect.signature(cls)
    wants = "cfg" in signature.parameters
    try:
        signature.bind(1, 1, cfg=None) if wants else signature.bind(1, 1)
    except TypeError as exc:
        called = f"{cls.__name__}(n_features, window{', cfg=cfg' if wants else ''})"
        raise ValueError(f"model {path!r}: the protocol calls {called}, which its constructor {signature} refuses "
                         f"({exc})") from None
    return wants


def user_model(cfg, n_features: int) -> nn.Module:
    """The user's model `cfg.model`, checked against the protocol on a probe batch of 2 windows, and with `dense`
    of 2 chunks (CPU, no gradient)."""
    path, window = cfg.model, cfg.window
    cls = user_class(path)
    wants, file = takes_cfg(cls, path), getattr(inspect.getmodule(cls), "__file__", None)
    try:
        model = cls(n_features, window, cfg=cfg) if wants else cls(n_features, window)
    except Exception as exc:  # noqa: BLE001 - the user's constructor failed: its error, not tradelib's
        called = f"{cls.__name__}(n_features {n_features}, window {window}{', cfg' if wants else ''})"
        raise ValueError(f"model {path!r}: {called} raised {type(exc).__name__}{_where(exc, file)}: {exc}") from exc
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model {path!r}: {cls.__name__} has no trainable parameters (none, or none with "
                         f"requires_grad): nothing for the optimizer to train")
    probe = torch.zeros(2, window, n_features)
    model.eval()  # no dropout draws: the probe leaves the RNG as it found it
    _probe(model, probe, (2,), f"model {path!r}: forward of [batch 2, window {window}, features {n_features}]",
           "[batch, window, features] -> [batch]", file)
    if hasattr(model, "forward_dense") and not isinstance(getattr(model, "receptive_field", None), int):
        raise ValueError(f"model {path!r}: forward_dense needs an int receptive_field (rows an output sees)")
    if cfg.dense and hasattr(model, "forward_dense"):  # the chunks training will give it
        length = cfg.dense_chunk
        if length < model.receptive_field:
            raise ValueError(f"model {path!r}: dense_chunk {length} is shorter than its receptive_field "
                             f"{model.receptive_field}: no position of a chunk would train")
        if model.receptive_field > window:  # as model_for refuses a tcn's
            raise ValueError(f"model {path!r}: receptive_field {model.receptive_field} exceeds window {window}: "
                             f"dense training would learn from more history than evaluation's windows hold; "
                             f"use a longer window")
        _probe(model.forward_dense, torch.zeros(2, length, n_features), (2, length),
               f"model {path!r}: forward_dense of [batch 2, dense_chunk {length}, features {n_features}]",
               "[batch, length, features] -> [batch, length]", file)
    model.train()
    return model


def _probe(fn, x: torch.Tensor, shape: tuple[int, ...], said: str, protocol: str, file: str | None) -> None:
    """Run the user's `fn` on the probe `x` (no gradient) and refuse, as `said`, an error or an output of another
    shape than `shape`: the protocol's failures said before training, not as errors inside its step."""
    try:
        with torch.no_grad():
            out = fn(x)
    except Exception as exc:  # noqa: BLE001 - the user's forward failed on the protocol's input
        raise ValueError(f"{said} raised {type(exc).__name__}{_where(exc, file)}: {exc}") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{said} gave {got}; the protocol is {protocol}")


def training_flops_per_item(model: nn.Module, dense: bool, chunk: int | None = None) -> float | None:
    """Forward + backward per item a step trains on, as torch's FlopCounterMode counts them: a window, or dense, a
    chunk of `chunk` rows, every one of them computed. A matmul's backward is twice its forward (the gradients of its
    input and of its weight; the usual 6N-per-token rule), except the layer that reads the data, whose backward
    makes no gradient for the data: 3x the forward less `input_flops` (an MLP's first layer is most of its FLOPs).
    None for a model of the user's without `flops_per_sample`."""
    count = getattr(model, "flops_per_sample", None)
    if count is None:
        return None
    input_flops = getattr(model, "input_flops", None)
    per = 3.0 * count(dense=dense) - (input_flops(dense=dense) if input_flops else 0.0)
    return per * chunk if dense and chunk else per


def training_flops_per_sample(model: nn.Module, dense: bool, chunk: int | None = None) -> float | None:
    """`training_flops_per_item` per trained target: dense, a chunk trains only its last chunk - receptive_field + 1
    positions, so each carries chunk / that many positions' FLOPs."""
    per_item = training_flops_per_item(model, dense, chunk)
    if per_item is None or not (dense and chunk):
        return per_item
    return per_item / max(chunk - getattr(model, "receptive_field", 1) + 1, 1)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

