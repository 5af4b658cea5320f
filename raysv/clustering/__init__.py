"""Clustering embeddings into pseudo labels: sharded faiss k-means and purification."""
