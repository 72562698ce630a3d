"""The Ray layer of a matrix job: the scorer-actor pool and its scheduling loop, the private local
cluster with its watchdog, GPUs per actor, and submitting jobs to a running cluster."""
