"""Accuracy per class and the confusion matrix, as numbers and as text.

Pure: no I/O.
"""
import numpy as np


def confusion_matrix(labels, predicted, classes):
    """(classes, classes) int64: row = true class, column = predicted class."""
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predicted)), 1)
    return matrix


def per_class_lines(matrix, class_names=None):
    """The per-class accuracy and the confusion matrix as lines of text.

    Rows are true classes, columns predicted ones; a class with no images has
    accuracy "-".
    """
    classes = len(matrix)
    names = list(class_names or [])[:classes]
    names += [str(k) for k in range(len(names), classes)]
    width = max(6, max(len(n) for n in names))
    lines = ["accuracy per class:"]
    for k, name in enumerate(names):
        count = int(matrix[k].sum())
        share = f"{matrix[k, k] / count:.4f}" if count else "-"
        lines.append(f"  {name:<{width}} {share:>6}  ({int(matrix[k, k])} of {count})")
    cell = max(5, len(str(int(matrix.max(initial=0)))) + 1)
    lines.append("confusion matrix (rows: true class, columns: predicted):")
    lines.append(" " * (width + 2) + "".join(f"{n[:cell - 1]:>{cell}}" for n in names))
    for k, name in enumerate(names):
        lines.append(f"  {name:<{width}}" + "".join(f"{int(v):>{cell}}" for v in matrix[k]))
    return lines
