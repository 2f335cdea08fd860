"""Retrieval-augmented generation, the retrieval half: corpora, chunking, BM25 and ranking metrics."""
