"""Many `RecurrentNetwork`s of one architecture evaluated in one batched pass.

A fleet serves one small network per station, and on a CPU a forward pass over a few windows is
dominated by per-call overhead, not arithmetic: twenty stations' windows through twenty
`nn.GRU` calls cost about twenty times one call. `StackedNetworks` holds the weights of every
member stacked on a leading axis; a pass gathers each window's own member weights and runs the
recurrent cell by hand with batched matrix products (`torch.baddbmm`), so windows of different
stations share every call.

The arithmetic is `shared.model_runtime.networks.RecurrentNetwork.forward` with per-window
parameters (a unit test holds the two together). Three choices keep a window's answer independent
of what it is batched with, bit for bit, so that one station's promotion (which rebuilds its
stack) or the traffic of others never changes another station's answers:
- every operation is per window (batched products, elementwise maths, reductions along a
  window's own axes): nothing mixes windows;
- every window's block of every batched product starts 64 bytes after the previous one (row
  lengths are multiples of `ALIGN` floats): the BLAS kernel of a product depends on the alignment
  of its operands, so a window at an odd position would otherwise get other rounding;
- the same padding makes every row of an elementwise `sigmoid` a whole number of vector widths:
  torch computes the vectorised body and the scalar tail of a row differently.
The padding is exact: padded inputs and hidden units are zeros with zero weights (a padded unit's
gates read 0 and its candidate is tanh(0) = 0, so it stays 0), padded head columns are dropped.
This holds with one torch thread, the inference service's default (TORCH_THREADS=1): with more,
torch splits a batched product over threads and MKL rounds a window's block differently than
alone, so answers then agree to float32 rounding (~1e-7 relative), not bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from shared.model_runtime.networks import VOLATILITY_FLOOR, ModelSpec, RecurrentNetwork

# Floats every padded row length is a multiple of: twice the widest vector (AVX-512: 16 floats),
# which is also a multiple of the 64-byte alignment BLAS kernels care about.
ALIGN = 32
# The stored state of a RecurrentNetwork this module knows how to stack (one recurrent layer's
# keys are added per layer); anything else is served model by model.
_FIXED_KEYS = frozenset(
    {"head.weight", "head.bias", "ar_weight", "input_centre", "input_scale", "change_scale"}
)
_LAYER_KEYS = ("weight_ih_l{}", "weight_hh_l{}", "bias_ih_l{}", "bias_hh_l{}")


def stackable(model: nn.Module) -> bool:
    """True for a plain RecurrentNetwork whose state this module reproduces exactly."""
    if type(model) is not RecurrentNetwork:
        return False
    layers = {key.format(layer) for layer in range(model.spec.num_layers) for key in _LAYER_KEYS}
    return set(model.state_dict()) == _FIXED_KEYS | {f"rnn.{key}" for key in layers}


@dataclass(frozen=True)
class _Layer:
    """One recurrent layer of every member, laid out for `x @ w`: gates along the last axis.

    GRU: gates (r, z, n); `input_bias` holds b_i and the r, z parts of b_h, `hidden_bias` only
    b_hn (it sits inside r * (W_hn h + b_hn)). LSTM: gates reordered (i, f, o, g) so that one
    sigmoid covers three of them; both biases are in `input_bias` and `hidden_bias` is None.
    """

    input_weight: torch.Tensor  # (M, inputs, gates * padded hidden)
    hidden_weight: torch.Tensor  # (M, padded hidden, gates * padded hidden)
    input_bias: torch.Tensor  # (M, 1, gates * padded hidden)
    hidden_bias: torch.Tensor | None  # (M, 1, gates * padded hidden), GRU only


@dataclass(frozen=True)
class _Params:
    """Every parameter a pass needs, one row per window (gathered) or per member (stacked)."""

    layers: tuple[_Layer, ...]
    head_weight: torch.Tensor  # (M, padded hidden, output_seq_len * n_targets)
    head_bias: torch.Tensor  # (M, 1, output_seq_len * n_targets)
    ar_weight: torch.Tensor  # (M, output_seq_len, n_targets, input_seq_len)
    input_centre: torch.Tensor  # (M, 1, n_features)
    input_scale: torch.Tensor  # (M, 1, n_features)
    change_scale: torch.Tensor  # (M, 1, n_targets)
    clip: torch.Tensor  # (M, 1, 1); inf where the member does not clip

    def take(self, members: Sequence[int]) -> _Params:
        """A row per window: member `members[b]`'s parameters in row b."""
        if len(set(members)) == 1:
            # One station's windows (a single-station service): one member broadcast, not copied
            # per window, which the batched products read from cache (the same values, same bits).
            first = members[0]

            def rows(tensor: torch.Tensor) -> torch.Tensor:
                return tensor[first : first + 1].expand(len(members), *tensor.shape[1:])

        else:
            index = torch.tensor(members, dtype=torch.long)

            def rows(tensor: torch.Tensor) -> torch.Tensor:
                # index_select: advanced indexing copies these rows ~8x slower.
                return torch.index_select(tensor, 0, index)

        layers = tuple(
            _Layer(
                rows(layer.input_weight),
                rows(layer.hidden_weight),
                rows(layer.input_bias),
                None if layer.hidden_bias is None else rows(layer.hidden_bias),
            )
            for layer in self.layers
        )
        return _Params(
            layers,
            rows(self.head_weight),
            rows(self.head_bias),
            rows(self.ar_weight),
            rows(self.input_centre),
            rows(self.input_scale),
            rows(self.change_scale),
            rows(self.clip),
        )


class StackedNetworks:
    """Networks of one `ModelSpec` shape (clip aside), evaluated together; immutable once built."""

    def __init__(self, networks: Sequence[RecurrentNetwork]) -> None:
        if not networks:
            raise ValueError("nothing to stack")
        spec = networks[0].spec
        for network in networks:
            if not stackable(network):
                raise ValueError(f"cannot stack a {type(network).__name__} with this state")
            if stack_shape(network.spec) != stack_shape(spec):
                raise ValueError(f"cannot stack {network.spec} with {spec}")
        self.spec = spec
        self.hidden = _aligned(spec.hidden_size)
        # The first layer reads the levels and the changes, padded with zero columns.
        self.inputs = _aligned(spec.n_features + spec.n_targets)
        self.outputs = spec.output_seq_len * spec.n_targets
        widths = (self.inputs, *[self.hidden] * (spec.num_layers - 1))
        with torch.no_grad():
            self._params = _Params(
                layers=tuple(
                    _stack_layer(networks, layer, width, self.hidden) for layer, width in enumerate(widths)
                ),
                head_weight=_stack(
                    [_pad(n.head.weight.t(), self.hidden, _aligned(self.outputs)) for n in networks]
                ),
                head_bias=_stack([_pad(n.head.bias[None, :], 1, _aligned(self.outputs)) for n in networks]),
                ar_weight=_stack([n.ar_weight for n in networks]),
                input_centre=_stack([n.input_centre[None, :] for n in networks]),
                input_scale=_stack([n.input_scale[None, :] for n in networks]),
                change_scale=_stack([n.change_scale[None, :] for n in networks]),
                clip=torch.tensor([[[n.spec.input_clip or math.inf]] for n in networks], dtype=torch.float32),
            )

    def forward(self, members: Sequence[int], x: torch.Tensor) -> torch.Tensor:
        """x: (B, input_seq_len, n_features) MinMax, row b evaluated by member `members[b]` ->
        (B, output_seq_len, n_targets) MinMax, as each member's `RecurrentNetwork.forward`."""
        p = self._params.take(members)
        spec = self.spec
        n_targets = spec.n_targets
        clip = p.clip
        levels = torch.clamp((x - p.input_centre) / p.input_scale, -clip, clip)
        changes = (x[:, 1:, :n_targets] - x[:, :-1, :n_targets]) / p.change_scale
        volatility = VOLATILITY_FLOOR + changes.abs().sum(dim=1, keepdim=True) / max(1, changes.shape[1])
        steps = torch.clamp(changes / volatility, -clip, clip)
        sequence = torch.cat([levels, nn.functional.pad(steps, (0, 0, 1, 0))], dim=2)
        sequence = nn.functional.pad(sequence, (0, self.inputs - sequence.shape[2]))
        run = _gru_layer if spec.model_type == "GRU" else _lstm_layer
        for depth, layer in enumerate(p.layers):
            sequence = run(layer, sequence, self.hidden, keep_all=depth < len(p.layers) - 1)
        recurrent = torch.baddbmm(p.head_bias, sequence, p.head_weight)[..., : self.outputs]
        recurrent = recurrent.reshape(-1, spec.output_seq_len, n_targets)
        lags = torch.cat([steps, levels[:, -1:, :n_targets]], dim=1)  # (B, input_seq_len, n_targets)
        autoregressive = (lags.transpose(1, 2)[:, None] * p.ar_weight).sum(dim=-1)
        change = (recurrent + autoregressive) * volatility
        return x[:, -1:, :n_targets] + change * p.change_scale


def _gru_layer(layer: _Layer, inputs: torch.Tensor, hidden: int, *, keep_all: bool) -> torch.Tensor:
    """(B, T, inputs) -> the outputs of every step (B, T, hidden) or of the last (B, 1, hidden)."""
    assert layer.hidden_bias is not None
    projected = torch.baddbmm(layer.input_bias, inputs, layer.input_weight)
    h = inputs.new_zeros(inputs.shape[0], 1, hidden)
    outputs = []
    for t in range(inputs.shape[1]):
        step = projected[:, t : t + 1]
        from_hidden = torch.baddbmm(layer.hidden_bias, h, layer.hidden_weight)
        reset_update = torch.sigmoid(step[..., : 2 * hidden] + from_hidden[..., : 2 * hidden])
        candidate = torch.tanh(
            torch.addcmul(step[..., 2 * hidden :], reset_update[..., :hidden], from_hidden[..., 2 * hidden :])
        )
        h = torch.addcmul(candidate, reset_update[..., hidden:], h - candidate)
        if keep_all:
            outputs.append(h)
    return torch.cat(outputs, dim=1) if keep_all else h


def _lstm_layer(layer: _Layer, inputs: torch.Tensor, hidden: int, *, keep_all: bool) -> torch.Tensor:
    """As `_gru_layer`, with gates (i, f, o, g): c = f * c + i * g, h = o * tanh(c)."""
    projected = torch.baddbmm(layer.input_bias, inputs, layer.input_weight)
    h = inputs.new_zeros(inputs.shape[0], 1, hidden)
    c = torch.zeros_like(h)
    outputs = []
    for t in range(inputs.shape[1]):
        gates = torch.baddbmm(projected[:, t : t + 1], h, layer.hidden_weight)
        sigmoids = torch.sigmoid(gates[..., : 3 * hidden])  # input, forget, output gates
        c = torch.addcmul(
            sigmoids[..., hidden : 2 * hidden] * c,
            sigmoids[..., :hidden],
            torch.tanh(gates[..., 3 * hidden :]),
        )
        h = sigmoids[..., 2 * hidden :] * torch.tanh(c)
        if keep_all:
            outputs.append(h)
    return torch.cat(outputs, dim=1) if keep_all else h


def stack_shape(spec: ModelSpec) -> tuple[object, ...]:
    """What must agree for networks to share a stack (the input clip is per member)."""
    return (
        spec.model_type,
        spec.hidden_size,
        spec.num_layers,
        spec.input_seq_len,
        spec.output_seq_len,
        spec.n_features,
        spec.n_targets,
    )


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach().to(torch.float32) for t in tensors]).contiguous()


def _pad(matrix: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """`matrix` with zero rows and columns appended up to (rows, columns)."""
    return nn.functional.pad(matrix, (0, columns - matrix.shape[1], 0, rows - matrix.shape[0]))


def _gate_blocks(tensor: torch.Tensor, gates: int, hidden: int, order: Sequence[int]) -> torch.Tensor:
    """(gates * H, ...) in torch's gate order -> (gates * hidden, ...) in `order`, each gate's H
    rows padded with zero rows to `hidden`."""
    blocks = tensor.chunk(gates, dim=0)
    pad = [0, 0] * (tensor.dim() - 1) + [0, hidden - blocks[0].shape[0]]
    return torch.cat([nn.functional.pad(blocks[i], pad) for i in order], dim=0)


def _stack_layer(networks: Sequence[RecurrentNetwork], layer: int, inputs: int, hidden: int) -> _Layer:
    """Layer `layer` of every network, reading `inputs` (padded) columns, `hidden` padded units."""
    gru = networks[0].spec.model_type == "GRU"
    gates, order = (3, (0, 1, 2)) if gru else (4, (0, 1, 3, 2))
    input_weights, hidden_weights, input_biases, hidden_biases = [], [], [], []
    for network in networks:
        state = network.rnn.state_dict()
        w_ih = _gate_blocks(state[f"weight_ih_l{layer}"], gates, hidden, order)
        w_hh = _gate_blocks(state[f"weight_hh_l{layer}"], gates, hidden, order)
        b_ih = _gate_blocks(state[f"bias_ih_l{layer}"], gates, hidden, order)
        b_hh = _gate_blocks(state[f"bias_hh_l{layer}"], gates, hidden, order)
        input_weights.append(_pad(w_ih, gates * hidden, inputs).t())
        hidden_weights.append(_pad(w_hh, gates * hidden, hidden).t())
        if gru:
            # b_hr and b_hz add to the input side; b_hn stays inside the reset product.
            input_biases.append((b_ih + torch.cat([b_hh[: 2 * hidden], torch.zeros(hidden)]))[None, :])
            hidden_biases.append(torch.cat([torch.zeros(2 * hidden), b_hh[2 * hidden :]])[None, :])
        else:
            input_biases.append((b_ih + b_hh)[None, :])
    return _Layer(
        _stack(input_weights),
        _stack(hidden_weights),
        _stack(input_biases),
        _stack(hidden_biases) if gru else None,
    )
