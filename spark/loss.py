"""Softmax cross-entropy loss and L2 regularisation.

Pure math: no I/O, no timing.
"""
import numpy as np


def softmax(scores):
    """(N, K) class scores -> (N, K) probabilities, each row summing to 1."""
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def softmax_loss(scores, labels, normalizer=None, smoothing=0.0):
    """Summed-then-normalised softmax cross-entropy and its gradient.

    Parameters
    ----------
    scores : (N, K) float array of class scores.
    labels : (N,) int array, values in [0, K).
    normalizer : number the loss and gradient are divided by; defaults to N.
        The local trainer computes a large batch chunk by chunk and passes the
        whole batch size here, so the chunks add up to the batch's mean loss.
    smoothing : label smoothing e in [0, 1): the target of each row is
        (1 - e) on its label plus e / K on every class, instead of the label alone.

    Returns
    -------
    loss : float, sum over the N rows of -sum_k target[k] log p[k], divided by normalizer.
    dscores : (N, K) array of the scores' dtype, d loss / d scores.
    """
    n = scores.shape[0]
    if normalizer is None:
        normalizer = n
    shifted = scores - scores.max(axis=1, keepdims=True)          # (N, K)
    exp = np.exp(shifted)
    sums = exp.sum(axis=1, keepdims=True)                          # (N, 1)
    rows = np.arange(n)
    log_sums = np.log(sums[:, 0])                                  # (N,)
    log_prob_true = shifted[rows, labels] - log_sums               # (N,)
    loss = -float(log_prob_true.sum(dtype=np.float64))
    dscores = exp / sums                                           # softmax, (N, K)
    if smoothing:
        k = scores.shape[1]
        # mean over the classes of -log p[k], per row: log_sums - mean(shifted)
        log_prob_mean = shifted.mean(axis=1, dtype=np.float64) - log_sums
        loss = (1.0 - smoothing) * loss - smoothing * float(log_prob_mean.sum())
        dscores -= smoothing / k
        dscores[rows, labels] -= 1 - smoothing
    else:
        dscores[rows, labels] -= 1
    loss /= normalizer
    dscores /= normalizer
    return loss, dscores


def l2_penalty(weights, reg):
    """0.5 * reg * sum of squares over the given weight arrays (biases excluded)."""
    return 0.5 * reg * sum(float(np.sum(w.astype(np.float64) ** 2)) for w in weights)
