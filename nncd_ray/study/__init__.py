"""Compression against accuracy: one matrix per compressor on a benchmark split, k-NN over each,
one table (JSON and Markdown) and plots."""
