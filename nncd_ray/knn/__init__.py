"""k-nearest neighbours over NCD: the pure-numpy k-NN (labels, neighbours, votes, statistics,
mutual proximity), k-NN over a stored matrix read block by block, its report, and a
scikit-learn compatible classifier."""
