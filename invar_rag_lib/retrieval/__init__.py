"""Retrievers: BM25 (bm25s) and MiniLM dense retrieval (FAISS), plus the evaluation harness."""
