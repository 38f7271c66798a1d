"""A failure in one line, for people: what the entry scripts print instead of a traceback.

A failed Spark job arrives as a Py4J error whose text is a Java stack trace,
possibly holding the Python worker's traceback; `one_line` finds the real
cause in it.
"""
import re

# The line a Python traceback ends with: "module.Name: message" or a bare "Name".
_PYTHON_ERROR = re.compile(r"^([A-Za-z_][\w.]*)(?:: ?(.*))?$")
# A Java exception: "org.pkg.SomeException: message" (message optional).
_JAVA_ERROR = re.compile(r"^((?:[a-z_$][\w$]*\.)+[A-Z][\w$]*)(?:: ?(.*))?$")
_JAVA_CLASS_PREFIX = re.compile(r"\b(?:[a-z_$][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error): ")
_SPARK_STAGE_FAILURE = re.compile(r"^Job aborted due to stage failure: .*?"
                                  r"most recent failure: Lost task [^:]*: ")


def _python_error(lines):
    """(name, message) of the error the last Python traceback in `lines` ends
    with: the exception the worker raised, after any it was chained from."""
    starts = [i for i, line in enumerate(lines) if "Traceback (most recent call last):" in line]
    if not starts:
        return None
    for line in lines[starts[-1] + 1:]:
        if not line.strip() or line[0] in " \t":
            continue                            # frames, source lines, carets
        match = _PYTHON_ERROR.match(line.rstrip())
        if match:
            return match.group(1).rsplit(".", 1)[-1], (match.group(2) or "").strip()
        return None
    return None


def _java_message(message):
    """A Java exception message without the noise: nested class names, wiki pointers."""
    inner = _SPARK_STAGE_FAILURE.sub("", message)
    inner = _JAVA_CLASS_PREFIX.sub("", inner)
    inner = re.sub(r";\s*For more details see:.*$", "", inner)
    inner = re.sub(r"\.?\s*Consider setting .*$", "", inner)       # Spark's faulthandler advice
    return inner.strip()


def _java_error(lines):
    """(class, message) of the deepest Java cause with a message, or None.

    The chain is the exception the Py4J call failed with (the line after
    "An error occurred while calling ...") and every "Caused by:" line. A
    cause's message is replaced by a shallower one of the same class that
    contains it (e.g. Hadoop's "Call From a to b failed on connection
    exception: ...Connection refused" over plain "Connection refused").
    """
    chain = []
    for line in lines:
        text = line.strip()
        if text.startswith("Caused by:"):
            text = text[len("Caused by:"):].strip()
        elif text.startswith(": "):
            text = text[2:].strip()
        else:
            continue
        match = _JAVA_ERROR.match(text)
        if match:
            chain.append((match.group(1).rsplit(".", 1)[-1], (match.group(2) or "").strip()))
    with_message = [(name, message) for name, message in chain if message]
    if not with_message:
        return chain[-1] if chain else None
    name, message = with_message[-1]
    for outer_name, outer in with_message[:-1]:
        if (outer_name == name and message in outer and outer != message
                and not _SPARK_STAGE_FAILURE.match(outer)):
            message = outer
            break
    return name, _java_message(message) or message


_JVM_OUT_OF_MEMORY = re.compile(r"OutOfMemoryError|exit code:? 52\b|exitCode=52\b|"
                                r"exited with code 52\b", re.I)
_PYTHON_OUT_OF_MEMORY = re.compile(r"^MemoryError\b|\bMemoryError\b.*in a Spark task", re.M)


def memory_hint(text, line):
    """What to raise when `text` (a failure's whole text) says something ran out of
    memory, else "". line: the one line already made of it."""
    if _JVM_OUT_OF_MEMORY.search(text):
        return ("; Spark's JVM ran out of memory: raise spark-submit --driver-memory (local "
                "master) or --executor-memory (a cluster's executors)")
    if "in a Spark task" in line and _PYTHON_OUT_OF_MEMORY.search(text):
        return ("; a Python worker ran out of memory: raise spark.executor.pyspark.memory if it "
                "is set, or give the executors more memory (fewer cores per executor, more and "
                "smaller batches)")
    if line.startswith("MemoryError"):
        return ": out of memory (fewer images, or a smaller --minibatch)"
    return ""


def one_line(error):
    """A failure in one line, for people.

    A failed Spark job arrives as a Py4J error whose text is a Java stack trace,
    possibly holding the Python worker's traceback. Reported is the deepest real
    cause: the worker's own error line if there is one, else the last Java
    "Caused by:" with a message, never Py4J's "An error occurred while calling ...".
    """
    try:
        text = str(error).strip() or type(error).__name__
    except Exception:  # noqa: BLE001 - a Py4J error asks the JVM for its text; it may be gone
        return (f"a Spark call failed and Spark's JVM cannot say why any more "
                f"({type(error).__name__}; it has probably stopped)")
    line = _one_line(text)
    return line + memory_hint(text, line)


def _one_line(text):
    lines = text.splitlines()
    if len(lines) == 1:
        return text
    python = _python_error(lines)
    if python:
        name, message = python
        return f"{message} ({name} in a Spark task)" if message else f"{name} in a Spark task"
    if lines[0].startswith("An error occurred while calling") or any(
            line.lstrip().startswith(("Caused by:", "at ")) for line in lines):
        java = _java_error(lines)
        if java:
            name, message = java
            return f"{message} ({name} in Spark)" if message else f"{name} in Spark"
    return lines[0]
