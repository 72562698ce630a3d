"""NCD k-NN as an online service on Ray Serve (``nncd serve``), and its client (``nncd classify``).

Two deployments: scorer replicas that hold the language model (or another compressor), the
reference set and C(y) of every reference, and score batches of queries gathered across
concurrent callers; and a light HTTP front end that checks the token and the request, sends the
queries to a scorer replica (again when a replica dies), and keeps the metrics. NCD and the k-NN
rule are the project's own (:mod:`nncd_ray.ncd`, :mod:`nncd_ray.knn.neighbours`), so an answer
equals what ``nncd matrix`` + ``nncd knn`` give for the same documents.

Importing this package imports neither Ray nor torch: the deployments live in
:mod:`nncd_ray.serve.replica` and :mod:`nncd_ray.serve.frontend`, loaded only when a service
starts; :mod:`nncd_ray.serve.client` needs only the standard library.
"""
