"""The CNN trained on Spark, with layer matrices kept in the Redis server of the
node that computed them (--exchange redis, the default of locality_*.py).

Everything but where the matrices go is SparkCNN's: each forward task puts
its batch's matrices into the Redis server of its own node (the first
SPARK_CNN_REDIS address that is this node's), and the backward task of the
batch, placed on that node, reads them there first, then from the other
nodes' servers in the order of SPARK_CNN_REDIS.
"""
from .spark_cnn import SparkCNN


class LocalityCNN(SparkCNN):
    """SparkCNN with the matrices in node-local Redis."""

    store_kind = "redis"
