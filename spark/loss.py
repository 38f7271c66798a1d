"""Softmax cross-entropy loss and L2 regularisation.

Pure math: no I/O, no timing.
"""
import numpy as np


def softmax_loss(scores, labels, normalizer=None):
    """Summed-then-normalised softmax cross-entropy and its gradient.

    Parameters
    ----------
    scores : (N, K) float array of class scores.
    labels : (N,) int array, values in [0, K).
    normalizer : number the loss and gradient are divided by; defaults to N.
        The local trainer computes a large batch chunk by chunk and passes the
        whole batch size here, so the chunks add up to the batch's mean loss.

    Returns
    -------
    loss : float, sum over the N rows of -log p[label], divided by normalizer.
    dscores : (N, K) array of the scores' dtype, d loss / d scores.
    """
    n = scores.shape[0]
    if normalizer is None:
        normalizer = n
    shifted = scores - scores.max(axis=1, keepdims=True)          # (N, K)
    exp = np.exp(shifted)
    sums = exp.sum(axis=1, keepdims=True)                          # (N, 1)
    rows = np.arange(n)
    log_prob_true = shifted[rows, labels] - np.log(sums[:, 0])     # (N,)
    loss = -float(log_prob_true.sum(dtype=np.float64)) / normalizer
    dscores = exp / sums                                           # softmax, (N, K)
    dscores[rows, labels] -= 1
    dscores /= normalizer
    return loss, dscores


def l2_penalty(weights, reg):
    """0.5 * reg * sum of squares over the given weight arrays (biases excluded)."""
    return 0.5 * reg * sum(float(np.sum(w.astype(np.float64) ** 2)) for w in weights)
