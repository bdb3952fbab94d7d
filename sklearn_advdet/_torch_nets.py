"""torch modules behind :mod:`sklearn_advdet.detectors` (imports torch).

This module is imported lazily by the detectors' ``fit`` so that
``import sklearn_advdet`` never pulls torch in.  The classes live at module
level so that fitted detectors pickle.
"""

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

__all__ = ["LSTMNet", "MLPNet", "WeightedValidAUC"]


class LSTMNet(nn.Module):
    """LSTM over a flattened ``(n, L*C)`` sequence; returns one logit per row.

    The row is read layer-major: step ``l`` holds columns ``l*C .. l*C+C-1``.
    The last layer's final hidden state (both directions concatenated when
    bidirectional) goes through dropout and a linear layer to one logit.
    """

    def __init__(
        self,
        n_steps,
        n_inputs,
        hidden_size=100,
        num_layers=1,
        bidirectional=False,
        dropout=0.0,
    ):
        super().__init__()
        self.n_steps = int(n_steps)
        self.n_inputs = int(n_inputs)
        self.bidirectional = bool(bidirectional)
        self.lstm = nn.LSTM(
            input_size=self.n_inputs,
            hidden_size=hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=self.bidirectional,
            # torch warns about inter-layer dropout with a single layer
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size * (2 if self.bidirectional else 1), 1)

    def forward(self, X):
        seq = X.reshape(X.shape[0], self.n_steps, self.n_inputs)
        _, (h_n, _) = self.lstm(seq)
        # h_n: (num_layers * num_directions, batch, hidden); the last layer's
        # forward state is h_n[-2] and backward state h_n[-1] when bidirectional
        if self.bidirectional:
            last = torch.cat([h_n[-2], h_n[-1]], dim=1)
        else:
            last = h_n[-1]
        return self.out(self.dropout(last)).squeeze(-1)


class MLPNet(nn.Module):
    """``n_inputs -> hidden_size`` ReLU units (+ dropout) ``-> 1`` logit."""

    def __init__(self, n_inputs, hidden_size=100, dropout=0.0):
        super().__init__()
        self.hidden = nn.Linear(int(n_inputs), hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 1)

    def forward(self, X):
        return self.out(self.dropout(torch.relu(self.hidden(X)))).squeeze(-1)


class WeightedValidAUC:
    """skorch ``EpochScoring`` callable: ROC AUC on the validation split.

    ``y_valid`` and ``sample_weight`` are those of the validation rows, in
    the order skorch iterates them (the validation iterator never shuffles).
    """

    def __init__(self, y_valid, sample_weight=None):
        self.y_valid = y_valid
        self.sample_weight = sample_weight

    def __call__(self, net, X, y=None):
        logits = net.forward(X, training=False).numpy().astype(np.float64)
        return float(
            roc_auc_score(self.y_valid, logits, sample_weight=self.sample_weight)
        )
