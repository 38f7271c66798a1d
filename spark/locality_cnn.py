"""The CNN trained on Spark, with layer matrices kept in the Redis server of the
node that computed them.

Everything but where the matrices go is SparkCNN's: marker files still go to
HDFS (so the backward stage keeps Spark's locality preference) and carry the
Redis keys; a backward task reads its own node's Redis first, then the other
nodes' in the order of SPARK_CNN_REDIS.
"""
from .spark_cnn import SparkCNN


class LocalityCNN(SparkCNN):
    """SparkCNN with the matrices in node-local Redis."""

    store_kind = "redis"
