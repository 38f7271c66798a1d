"""spark-cnn: a from-scratch NumPy CNN that trains locally or on Apache Spark.

Submodules are imported lazily (``import spark.im2col`` etc.); importing the
bare package is cheap and never imports pyspark.
"""

__version__ = "0.1.0"
