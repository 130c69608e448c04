"""Models over a window [batch, window, features] -> one prediction per window [batch].

LayerNorm rather than BatchNorm everywhere: BatchNorm statistics are per micro-batch, which breaks the
equivalence of gradient accumulation with one big batch (pytorch #46516).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MODELS = ("mlp", "lstm", "gru", "tcn")  # Config.model's choices name the same four


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

    def flops_per_sample(self) -> float:
        """Forward matmul FLOPs per window (2 per multiply-add)."""
        d = self.n_features * self.window
        return 2.0 * (d * self.hidden + (self.layers - 1) * self.hidden**2 + self.hidden)


class RNN(nn.Module):
    def __init__(self, kind: str, n_features: int, hidden: int, layers: int, dropout: float, output_clip: float):
        super().__init__()
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(n_features, hidden, num_layers=max(layers, 1), batch_first=True,
                       dropout=dropout if layers > 1 else 0.0)
        self.norm = nn.LayerNorm(hidden)
        self.head = Head(hidden, output_clip)
        self.gates = 4 if kind == "lstm" else 3
        self.n_features, self.hidden, self.layers = n_features, hidden, max(layers, 1)
        self.window = 0  # set by build_model: FLOPs scale with it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(self.norm(out[:, -1]))

    def flops_per_sample(self) -> float:
        per_step = sum(
            2.0 * self.gates * ((self.n_features if i == 0 else self.hidden) + self.hidden) * self.hidden
            for i in range(self.layers)
        )
        return per_step * self.window + 2.0 * self.hidden


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

    def flops_per_sample(self) -> float:
        """Per prediction (one output position): what dense mode pays per trained target."""
        per_pos = 2.0 * self.n_features * self.hidden
        per_pos += sum(2 * 2.0 * self.kernel * self.hidden**2 for _ in self.blocks) + 2.0 * self.hidden
        return per_pos


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


def build_model(name: str, n_features: int, window: int, hidden: int = 64, layers: int = 2,
                dropout: float = 0.0, init_gain: float = 0.5, output_clip: float = 0.0) -> nn.Module:
    name = name.lower()
    if name == "mlp":
        model = MLP(n_features, window, hidden, layers, dropout, output_clip)
    elif name in ("lstm", "gru"):
        model = RNN(name, n_features, hidden, layers, dropout, output_clip)
        model.window = window
    elif name == "tcn":
        model = TCN(n_features, hidden, layers, dropout, output_clip)
        if model.receptive_field > window:
            raise ValueError(f"tcn: receptive field {model.receptive_field} exceeds window {window}: "
                             f"use fewer layers or a longer window")
    else:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    init_weights(model, init_gain)
    return model


def training_flops_per_sample(model: nn.Module) -> float:
    """Forward + backward ~ 3x the forward FLOPs (the usual 6N-per-token rule for matmuls)."""
    return 3.0 * model.flops_per_sample()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_for(cfg, n_features: int) -> nn.Module:
    """The model a Config asks for."""
    return build_model(cfg.model, n_features, cfg.window, cfg.hidden, cfg.layers, cfg.dropout, cfg.init_gain,
                       cfg.output_clip)
