"""Where the Spark trainers keep what crosses between stages and runs.

`store` (the interface and its errors), `wire` (the array format),
`redis_store` and `hdfs_store` (the two back ends), `exchange` (which store a
run uses and how tasks reach it) and `runs` (heartbeats, and removing what
dead runs left).
"""
