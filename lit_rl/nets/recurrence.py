"""Defines the recurrent state: the :class:`History` a recurrent pass takes, and the LSTM/GRU
:class:`Summarizer`."""

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor, nn

Recurrent = Literal["lstm", "gru"]
RECURRENT = ("lstm", "gru")


@dataclass
class History:
    """Holds what a recurrent forward pass needs besides the observations ``[L, B, ...]``.

    ``starts[t, b]`` marks the first step of an episode (the state is zeroed before it), ``state`` is each
    sequence's state before its first step (``[B, state_size]``). With ``valid`` (``[L * B]``, time-major)
    the outputs keep only those samples. The pass leaves the state after the last step in ``final_state``.
    """

    starts: Tensor
    state: Tensor
    valid: Optional[Tensor] = None
    final_state: Optional[Tensor] = None


class Summarizer(nn.Module):
    """Runs an LSTM or GRU over a history of features; the state restarts from zero where an episode starts.

    The state travels as one ``[B, state_size]`` tensor (an LSTM's ``h`` and ``c`` side by side). A sequence
    is run in as few calls as its episode starts allow: one call per span between steps where some env
    starts an episode, so a step-by-step pass (collection) and a whole-sequence pass (training) do the
    same arithmetic.
    """

    def __init__(self, kind: str, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.kind, self.hidden = kind, hidden
        self.rnn = nn.LSTM(in_dim, hidden) if kind == "lstm" else nn.GRU(in_dim, hidden)
        for name, param in self.rnn.named_parameters():
            if "weight" in name:
                nn.init.orthogonal_(param, 1.0)
            else:
                nn.init.zeros_(param)
        self.state_size = 2 * hidden if kind == "lstm" else hidden

    def forward(self, x: Tensor, starts: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Maps ``x [L, B, F]``, ``starts [L, B]`` and ``state [B, state_size]`` to
        ``(outputs [L, B, H], final state)``."""

        L = x.shape[0]
        cuts = [0, *(starts[1:].any(1).nonzero().flatten() + 1).tolist(), L]
        outputs = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            state = state * (~starts[a]).unsqueeze(-1).to(state.dtype)
            if self.kind == "lstm":
                h, c = state.unsqueeze(0).chunk(2, -1)
                y, (h, c) = self.rnn(x[a:b], (h.contiguous(), c.contiguous()))
                state = torch.cat([h, c], -1).squeeze(0)
            else:
                y, h = self.rnn(x[a:b], state.unsqueeze(0).contiguous())
                state = h.squeeze(0)
            outputs.append(y)
        return torch.cat(outputs), state
